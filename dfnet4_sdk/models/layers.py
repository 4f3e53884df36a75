"""Streaming building blocks shared by the model family.

Each block has a sequence form (fast, for training and offline use) and a single-frame
``step`` form with explicit state that exports to ONNX, CoreML and TFLite: no ``chunk``
(coremltools fails on ``unsafe_chunk`` / ``gru_cell``), no einsum, no Python loop over time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def runs_mask(runs: Tensor) -> Tensor:
    """``base.STAGE_RUNS`` [B] (bool or int64 0/1) as bool."""
    return runs if runs.dtype == torch.bool else runs > 0


def shift_buffer(window: Tensor, time_axis: int, runs: Tensor | None = None) -> Tensor:
    """A conv's new time buffer from its ``window`` (the old buffer, then one new frame, along
    ``time_axis``): its last K - 1 frames; with ``runs`` [B], the first K - 1 (the old buffer)
    for the streams not in it. ``runs`` int64 0/1 selects by one row gather from the window
    (onnxruntime: its ``Where`` between new and old buffers cost as much as DFN3's df_dec conv;
    frame_streams 0.90x), bool by ``where`` (LiteRT: XNNPACK runs no gather, and the gather
    made its frame_streams 1.08x)."""
    k = window.shape[time_axis]
    if runs is None:
        return window.narrow(time_axis, 1, k - 1)
    if runs.dtype == torch.bool:
        keep = runs.reshape(-1, *([1] * (window.dim() - 1)))
        return torch.where(keep, window.narrow(time_axis, 1, k - 1), window.narrow(time_axis, 0, k - 1))
    shape, inner, lead = window.shape, 1, 1
    for n in shape[time_axis + 1 :]:
        inner *= n
    for n in shape[:time_axis]:
        lead *= n
    ones = [1] * time_axis
    first = torch.arange(lead, dtype=torch.long).reshape(-1, *shape[1:time_axis], 1) * k  # frame 0's row
    rows = first + torch.arange(k - 1, dtype=torch.long) + runs.reshape(-1, *ones)  # [*lead axes, K - 1]
    # embedding: one Gather whose output is already the buffer's shape (a reshape after it is
    # a copy when the buffer is a graph output)
    picked = F.embedding(rows, window.reshape(-1, inner))  # [*lead axes, K - 1, inner]
    return picked if time_axis == window.dim() - 2 else picked.reshape(*shape[:time_axis], k - 1, *shape[time_axis + 1 :])


class GroupedLinear(nn.Module):
    """Block-diagonal linear layer (DFN3's GroupedLinearEinsum), weight [G, I/G, H/G]."""

    def __init__(self, input_size: int, hidden_size: int, groups: int = 1):
        super().__init__()
        if input_size % groups or hidden_size % groups:
            raise ValueError(f"input_size {input_size} and hidden_size {hidden_size} must divide by groups {groups}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(groups, input_size // groups, hidden_size // groups))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        # x [..., I] -> [G, rows, I/G] @ [G, I/G, H/G] -> [G, rows, H/G] -> [..., H]. Groups lead:
        # one matmul per group over all rows (frames); with rows leading instead, a 100-frame
        # block became 1,600 1-row matmuls, 7x slower in onnxruntime.
        lead = x.shape[:-1]
        x = x.reshape(-1, self.groups, self.input_size // self.groups).transpose(0, 1)
        return torch.matmul(x, self.weight).transpose(0, 1).reshape(*lead, self.hidden_size)


class GRU(nn.GRU):
    """``nn.GRU`` (batch_first) whose state is [B, num_layers, H] and which has an exact,
    export-friendly ``step``. Parameters keep torch's names and gate order (r, z, n)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1):
        super().__init__(input_size, hidden_size, num_layers=num_layers, batch_first=True)

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """x [B, T, I], h [B, L, H] or None -> (y [B, T, H], h [B, L, H])."""
        h0 = None if h is None else h.transpose(0, 1).contiguous()
        y, h_n = super().forward(x, h0)
        return y, h_n.transpose(0, 1)

    def step(self, x: Tensor, h: Tensor, runs: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x [B, I] one frame, h [B, L, H] -> (y [B, H], h [B, L, H]); ``runs`` [B] bool: streams
        not in it keep h (``base.STAGE_RUNS``)."""
        hs = []
        for layer in range(self.num_layers):  # layers, not time: unrolled at export
            x = self._cell(x, h[:, layer], layer)
            hs.append(x)
        new = torch.stack(hs, dim=1)
        return x, new if runs is None else torch.where(runs_mask(runs).reshape(-1, 1, 1), new, h)

    def _cell(self, x: Tensor, h: Tensor, layer: int) -> Tensor:
        H = self.hidden_size
        gi = F.linear(x, getattr(self, f"weight_ih_l{layer}"), getattr(self, f"bias_ih_l{layer}"))
        gh = F.linear(h, getattr(self, f"weight_hh_l{layer}"), getattr(self, f"bias_hh_l{layer}"))
        # r and z share one add and one sigmoid; h' = (1 - z) * n + z * h written as
        # n + z * (h - n): the same value in two fewer graph nodes per layer and frame.
        rz = torch.sigmoid(gi[:, : 2 * H] + gh[:, : 2 * H])
        r, z = rz[:, :H], rz[:, H:]
        n = torch.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])
        return n + z * (h - n)


class CausalConv2d(nn.Module):
    """Conv2d over [B, C, T, F], causal in time (kernel_t - 1 past frames), 'same' in frequency
    (kernel_f // 2 each side) with optional frequency stride. Step state is the last
    kernel_t - 1 input frames, [B, C_in, kernel_t - 1, F]."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: tuple[int, int],
        fstride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        self.in_ch = in_ch
        self.kernel_t, kernel_f = kernel_size
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel_size, stride=(1, fstride), padding=(0, kernel_f // 2), groups=groups, bias=bias
        )

    def buffer_shape(self, freq: int) -> tuple[int, int, int, int]:
        return (1, self.in_ch, self.kernel_t - 1, freq)

    def forward(
        self, x: Tensor, buffer: Tensor | None = None, runs: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """x [B, C, T, F]; buffer None means zeros. Returns (y, new buffer or None if kernel_t == 1).
        ``runs`` [B] bool (one frame): streams not in it keep their buffer (``base.STAGE_RUNS``)."""
        if self.kernel_t == 1:
            return self.conv(x), None
        if buffer is None:
            buffer = x.new_zeros(x.shape[0], x.shape[1], self.kernel_t - 1, x.shape[3])
        x = torch.cat([buffer, x], dim=2)
        if runs is None:
            return self.conv(x), x[:, :, -(self.kernel_t - 1) :]
        return self.conv(x), shift_buffer(x, 2, runs)

    step = forward  # the same code is exact at T == 1 and exports cleanly

