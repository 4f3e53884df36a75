"""Mamba-1 selective state-space blocks, streamable by construction.

Dimension letters: B batch, T frames, M model width, D inner width (expand * M), N SSM state
size, K local conv width, R dt rank.

One selective SSM channel d with state h [N] evolves per frame t as

    dt_t = softplus(dt_proj(x_proj(x_t)))            > 0 (``softplus`` below: a stable form)
    A    = -exp(A_log)                               < 0
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t   exp(...) in (0, 1]: never grows
    y_t  = C_t . h_t + D * x_t

Three forms compute exactly this recurrence:

- ``selective_scan_reference``: the plain per-frame loop, the definition (tests only);
- ``selective_scan``: the sequence form, a two-level chunked scan (about 3 * sqrt(T)
  vectorised steps, not T). Every factor it multiplies is a decay in (0, 1]; nothing is
  divided or exponentiated with a positive cumulative sum, so it cannot overflow. (A
  log2(T)-step Hillis-Steele scan was measured several times slower on CPU than even the
  per-frame loop: it rewrites the whole [B, T, N, D] buffer log2(T) times);
- ``MambaBlock.step``: one frame with explicit state (conv buffer [B, K-1, D] and SSM state
  [B, N, D]); plain matmul / elementwise / slicing only, for ONNX, CoreML and TFLite.

The SSM state is laid out [B, N, D], D innermost, in every form: the per-frame update is then
N rows of D elements. Laid out [B, D, N], a broadcast of a [B, D, 1] against a [B, 1, N]
operand runs as D kernel calls of N elements (XNNPACK: 256 calls of 8 floats per op, LiteRT's
DfNet4Lite frame graph 10% slower; onnxruntime 2.6x slower in the sequence form).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfnet4_sdk.models.base import STAGE_RUNS, StateSpec
from dfnet4_sdk.models.layers import GroupedLinear, runs_mask, shift_buffer
from dfnet4_sdk.models.scan_training import SelectiveScan

SCAN_BLOCK_FRAMES = 1024  # bounds the [B, T, N, D] scan buffers on long offline inputs


def selective_scan_reference(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The recurrence frame by frame. x, dt [B, T, D]; A [D, N]; B, C [B, T, N]; D [D];
    h0 [B, N, D] or None. Returns (y [B, T, D], h_T [B, N, D])."""
    h = x.new_zeros(x.shape[0], A.shape[1], x.shape[2]) if h0 is None else h0
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, None, :] * A.t()) * h + B[:, t, :, None] * (dt[:, t] * x[:, t])[:, None, :]
        ys.append((h * C[:, t, :, None]).sum(1) + D * x[:, t])
    return torch.stack(ys, dim=1), h


# The chunked scan: the T frames are cut into nc chunks of L ~ sqrt(T) frames, laid out
# [B, L, nc, ...] so that one vectorised step advances every chunk by one frame.
#   pass 1: L steps from a zero state give each chunk's end state;
#   carry:  nc steps propagate the true state across chunk boundaries, using the chunk's
#           total decay exp(A * sum(dt over the chunk)) in (0, 1];
#   pass 2: L steps from each chunk's true start state read out y.
# Every factor is a decay in (0, 1]; nothing is exponentiated with a positive sum.
# The outer product B x (dt * x) and the read-out C . h are matmuls over the [..., N, D] state.
def _chunk_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    b, t, di = x.shape
    L = min(64, max(4, math.ceil(math.sqrt(t))))
    nc = math.ceil(t / L)
    pad = nc * L - t

    def chunked(v: Tensor) -> Tensor:  # [b, t, k] -> [b, L, nc, k], zero-padded: dt = 0 keeps the state
        if pad:
            v = torch.cat([v, v.new_zeros(b, pad, v.shape[2])], dim=1)
        return v.reshape(b, nc, L, v.shape[2]).transpose(1, 2)

    dtc = chunked(dt)
    A_nd = A.t()  # [N, di]
    decay = torch.exp(dtc.unsqueeze(3) * A_nd)  # [b, L, nc, N, di] in (0, 1]
    u = torch.matmul(chunked(B).unsqueeze(-1), (dtc * chunked(x)).unsqueeze(3))  # [.., N, 1] @ [.., 1, di]
    # Per-step slices keep their size-1 axis (split, not unbind): in an export every squeeze
    # is one more node that copies its tensor.
    decay_l, u_l, c_l = decay.split(1, dim=1), u.split(1, dim=1), chunked(C).unsqueeze(3).split(1, dim=1)
    # Pass 1: every chunk from a zero state, all chunks at once; L steps.
    end = torch.zeros_like(u_l[0])  # [b, 1, nc, N, di]
    for l in range(L):
        end = decay_l[l] * end + u_l[l]
    # Carry across chunks; a chunk's total decay is exp(A * sum of its dt) in (0, 1].
    chunk_decay = torch.exp(dtc.sum(1, keepdim=True).unsqueeze(3) * A_nd)  # [b, 1, nc, N, di]
    h = h.reshape(b, 1, 1, A.shape[1], di)
    starts = []
    for d_c, e_c in zip(chunk_decay.split(1, dim=2), end.split(1, dim=2)):
        starts.append(h)
        h = d_c * h + e_c
    # Pass 2: every chunk from its true start state, reading out y; L steps.
    hc = torch.cat(starts, dim=2)  # [b, 1, nc, N, di]
    ys = []
    for l in range(L):
        hc = decay_l[l] * hc + u_l[l]
        ys.append(torch.matmul(c_l[l], hc))  # [b, 1, nc, 1, N] @ [b, 1, nc, N, di]
    y = torch.cat(ys, dim=1).reshape(b, L, nc, di).transpose(1, 2).reshape(b, nc * L, di)[:, :t]
    return y + D * x, h.reshape(b, A.shape[1], di)


def selective_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    h0: Tensor | None = None,
    block_frames: int = SCAN_BLOCK_FRAMES,
    train_scan=SelectiveScan,
) -> tuple[Tensor, Tensor]:
    """Sequence form of ``selective_scan_reference`` (same arguments and results): a two-level
    chunked scan in about 3 * sqrt(T) vectorised steps instead of T, over blocks of
    ``block_frames`` frames (state carried) so that long inputs keep bounded buffers.
    ``train_scan``: what computes it when a gradient is needed (an autograd Function's form:
    ``.apply`` with ``_chunk_scan``'s arguments and results)."""
    h = x.new_zeros(x.shape[0], A.shape[1], x.shape[2]) if h0 is None else h0
    # Training: the same scan with its gradient written out (scan_training.py), not autograd
    # through every step of it. Inference and export keep the plain ops.
    train = torch.is_grad_enabled() and any(v.requires_grad for v in (x, dt, A, B, C, D, h))
    scan = train_scan.apply if train else _chunk_scan
    ys = []
    for s in range(0, x.shape[1], block_frames):  # blocks of ~10 s, not frames
        e = s + block_frames
        y, h = scan(x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], D, h)
        ys.append(y)
    return torch.cat(ys, dim=1), h


def use_train_scan(model: nn.Module, scan) -> int:
    """Every Mamba mixer of ``model`` trains through ``scan`` (``selective_scan``'s
    ``train_scan``); inference and export are unaffected. Returns how many mixers it set."""
    mixers = [m for m in model.modules() if isinstance(m, MambaBlock)]
    for m in mixers:
        m.train_scan = scan
    return len(mixers)


def softplus(x: Tensor) -> Tensor:
    """log(1 + exp(x)) as max(x, 0) + log(1 + exp(-|x|)): exact, never overflows, and built from
    ops every backend vectorises (onnxruntime's Softplus kernel is 4x slower on a [100, 256]
    block; TFLite and CoreML have no dedicated op either)."""
    return torch.relu(x) + torch.log(1.0 + torch.exp(-torch.abs(x)))


def _inverse_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


class MambaBlock(nn.Module):
    """The Mamba-1 mixer: in_proj -> causal depthwise conv -> selective SSM -> gate -> out_proj."""

    # What the selective scan trains through (``selective_scan``'s ``train_scan``); a trainer may
    # choose another form of the same Function per model (``use_train_scan``).
    train_scan = SelectiveScan

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ):
        super().__init__()
        if d_conv < 2:
            raise ValueError(f"d_conv must be >= 2 (a causal conv over the current and past frames), got {d_conv}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        di = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * di, bias=False)
        self.conv1d = nn.Conv1d(di, di, d_conv, groups=di)  # no padding: the buffer supplies the past
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, di)
        self.out_proj = nn.Linear(di, d_model, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        with torch.no_grad():  # dt starts log-uniform in [dt_min, dt_max], as in Mamba
            nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
            dt = torch.exp(torch.rand(di) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            self.dt_proj.bias.copy_(_inverse_softplus(dt.clamp(min=1e-4)))

    @property
    def conv_state_shape(self) -> tuple[int, int, int]:
        return (1, self.d_conv - 1, self.d_inner)

    @property
    def ssm_state_shape(self) -> tuple[int, int, int]:
        return (1, self.d_state, self.d_inner)

    def _ssm_inputs(self, xc: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """xc [..., D] conv output -> (silu(xc), dt [..., D], B [..., N], C [..., N])."""
        xc = F.silu(xc)
        p = self.x_proj(xc)
        r, n = self.dt_rank, self.d_state
        dt = softplus(self.dt_proj(p[..., :r]))
        return xc, dt, p[..., r : r + n], p[..., r + n :]

    def forward(self, x: Tensor, conv_state: Tensor | None = None, ssm_state: Tensor | None = None):
        """Sequence form. x [B, T, M] -> (y [B, T, M], conv_state [B, K-1, D], ssm_state [B, N, D])."""
        di = self.d_inner
        if conv_state is None:
            conv_state = x.new_zeros(x.shape[0], self.d_conv - 1, di)
        xz = self.in_proj(x)
        xi, z = xz[..., :di], xz[..., di:]
        xcat = torch.cat([conv_state, xi], dim=1)  # [B, K-1+T, D]
        # The depthwise causal conv as K shifted multiply-adds: onnxruntime's depthwise Conv1d
        # kernel took 3x longer for the same work.
        kernel, t = self.conv1d.weight[:, 0, :], x.shape[1]  # [D, K]
        xc = self.conv1d.bias + sum(xcat[:, k : k + t] * kernel[:, k] for k in range(self.d_conv))  # [B, T, D]
        xc, dt, b, c = self._ssm_inputs(xc)
        A = -torch.exp(self.A_log)
        y, h = selective_scan(xc, dt, A, b, c, self.D, ssm_state, train_scan=self.train_scan)
        return self.out_proj(y * F.silu(z)), xcat[:, -(self.d_conv - 1) :], h

    def step(self, x: Tensor, conv_state: Tensor, ssm_state: Tensor, runs: Tensor | None = None):
        """One frame. x [B, M] -> (y [B, M], conv_state [B, K-1, D], ssm_state [B, N, D]).
        ``runs`` [B]: streams not in it keep both states (``base.STAGE_RUNS``): their dt is
        0, so the SSM update is h * exp(0) + B (0 * x) = h, the same values without a select
        over the [B, N, D] state; their conv buffer is selected by ``shift_buffer``."""
        di = self.d_inner
        xz = self.in_proj(x)
        xi, z = xz[:, :di], xz[:, di:]
        window = torch.cat([conv_state, xi.unsqueeze(1)], dim=1)  # [B, K, D]
        kernel = self.conv1d.weight[:, 0, :].transpose(0, 1)  # [K, D]
        xc = (window * kernel).sum(1) + self.conv1d.bias
        xc, dt, b, c = self._ssm_inputs(xc)
        if runs is not None:
            dt = torch.where(runs_mask(runs).reshape(-1, 1), dt, torch.zeros_like(dt))
        A_nd = -torch.exp(self.A_log).t()  # [N, D]
        # The outer product as a matmul, the read-out as N rows of D: both one kernel call.
        h = torch.exp(dt.unsqueeze(1) * A_nd) * ssm_state + torch.matmul(b.unsqueeze(-1), (dt * xc).unsqueeze(1))
        y = (h * c.unsqueeze(-1)).sum(1) + self.D * xc
        return self.out_proj(y * F.silu(z)), shift_buffer(window, 1, runs), h


class Mamba(nn.Module):
    """Pre-norm residual Mamba layer: x + mixer(LayerNorm(x)). LayerNorm is per frame (causal)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mixer = MambaBlock(d_model, d_state, d_conv, expand)

    def forward(self, x: Tensor, conv_state: Tensor | None = None, ssm_state: Tensor | None = None):
        y, conv_state, ssm_state = self.mixer(self.norm(x), conv_state, ssm_state)
        return x + y, conv_state, ssm_state

    def step(self, x: Tensor, conv_state: Tensor, ssm_state: Tensor, runs: Tensor | None = None):
        y, conv_state, ssm_state = self.mixer.step(self.norm(x), conv_state, ssm_state, runs)
        return x + y, conv_state, ssm_state


class SqueezedMamba(nn.Module):
    """DFN3's SqueezedGRU_S with Mamba layers: grouped linear in (+ReLU) -> L Mamba layers ->
    optional grouped linear out (+ReLU). States ``<name>_mamba<i>_conv`` / ``<name>_mamba<i>_ssm``."""

    def __init__(
        self,
        name: str,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        num_layers: int = 1,
        groups: int = 1,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
    ):
        super().__init__()
        self.name = name
        self.linear_in = GroupedLinear(input_size, hidden_size, groups)
        self.layers = nn.ModuleList(Mamba(hidden_size, d_state, d_conv, expand) for _ in range(num_layers))
        self.linear_out = GroupedLinear(hidden_size, output_size, groups) if output_size else None
        self.output_size = output_size or hidden_size

    def state_specs(self) -> tuple[StateSpec, ...]:
        specs = []
        for i, layer in enumerate(self.layers):
            specs.append(StateSpec(f"{self.name}_mamba{i}_conv", layer.mixer.conv_state_shape))
            specs.append(StateSpec(f"{self.name}_mamba{i}_ssm", layer.mixer.ssm_state_shape))
        return tuple(specs)

    def _out(self, x: Tensor) -> Tensor:
        return x if self.linear_out is None else torch.relu(self.linear_out(x))

    def forward(self, x: Tensor, state: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """x [B, T, I] -> (y [B, T, O], new state)."""
        x = torch.relu(self.linear_in(x))
        new = {}
        for i, layer in enumerate(self.layers):
            cn, sn = f"{self.name}_mamba{i}_conv", f"{self.name}_mamba{i}_ssm"
            x, new[cn], new[sn] = layer(x, state[cn], state[sn])
        return self._out(x), new

    def step(self, x: Tensor, state: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """x [B, I] one frame -> (y [B, O], new state)."""
        x = torch.relu(self.linear_in(x))
        new = {}
        for i, layer in enumerate(self.layers):  # layers, not time: unrolled at export
            cn, sn = f"{self.name}_mamba{i}_conv", f"{self.name}_mamba{i}_ssm"
            x, new[cn], new[sn] = layer.step(x, state[cn], state[sn], state.get(STAGE_RUNS))
        return self._out(x), new


class BidirectionalMamba(nn.Module):
    """Forward and time-reversed Mamba, outputs summed. It sees future frames, so it is for
    offline training aids (e.g. a teacher) only: it has no step form and no streaming model
    of this package contains one (a test checks every preset)."""

    streamable = False

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.fwd = Mamba(d_model, d_state, d_conv, expand)
        self.bwd = Mamba(d_model, d_state, d_conv, expand)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, T, M] -> [B, T, M] (non-causal)."""
        y_fwd = self.fwd(x)[0]
        y_bwd = self.bwd(torch.flip(x, dims=[1]))[0]
        return y_fwd + torch.flip(y_bwd, dims=[1]) - x  # each layer adds the residual x once

    def step(self, *args, **kwargs):
        raise NotImplementedError("BidirectionalMamba needs the whole sequence; it cannot run frame by frame")
