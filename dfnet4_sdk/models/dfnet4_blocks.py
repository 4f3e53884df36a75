"""DfNet4 building blocks with named streaming state: causal conv blocks and the backbones.

Every stateful block knows the name of its state tensor(s) and returns the updated ones;
the components gather them. The same code runs the sequence form and the single-frame form
except the backbones, whose ``step`` is the export-friendly recurrence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfnet4_sdk.models.base import STAGE_RUNS, StateSpec
from dfnet4_sdk.models.layers import GRU, CausalConv2d, GroupedLinear
from dfnet4_sdk.models.mamba import SqueezedMamba

TensorDict = dict[str, Tensor]


def conv_out_freq(freq: int, fstride: int) -> int:
    """Bins after a 'same'-padded conv with kernel_f 3 (or 1) and stride ``fstride``."""
    return (freq - 1) // fstride + 1


class ConvBlock(nn.Module):
    """Causal conv over [B, C, T, F] + activation. ``separable``: depthwise (kt, kf) conv then a
    1x1 pointwise conv (DFN3's separable Conv2dNormAct, without BatchNorm: training-mode batch
    statistics would mix frames). With kernel_t > 1 the block owns the state ``name``:
    the last kernel_t - 1 input frames, [B, C_in, kernel_t - 1, F_in].

    ``dfn3_layout``: exactly DFN3's folded Conv2dNormAct (``dfnet3.ConvNormAct``) so its weights
    copy over: groups gcd(C_in, C_out) when separable, a pointwise conv only when grouped and the
    kernel is larger than 1x1, the bias on the last conv."""

    def __init__(
        self,
        name: str | None,
        in_ch: int,
        out_ch: int,
        freq: int,
        kernel: tuple[int, int],
        fstride: int = 1,
        separable: bool = True,
        act: str = "relu",
        dfn3_layout: bool = False,
    ):
        super().__init__()
        self.name, self.freq, self.act = name, freq, act
        if dfn3_layout:
            groups = math.gcd(in_ch, out_ch) if separable else 1
            pointwise = groups > 1 and max(kernel) > 1
            self.conv = CausalConv2d(in_ch, out_ch, kernel, fstride=fstride, groups=groups, bias=not pointwise)
            self.pointwise = nn.Conv2d(out_ch, out_ch, 1) if pointwise else None
        else:
            separable = separable and in_ch == out_ch and in_ch > 1
            self.conv = CausalConv2d(in_ch, out_ch, kernel, fstride=fstride, groups=in_ch if separable else 1)
            self.pointwise = nn.Conv2d(out_ch, out_ch, 1, bias=False) if separable else None
        if self.conv.kernel_t > 1 and not name:
            raise ValueError("a conv block with kernel_t > 1 has a state and needs a name")
        self.freq_out = conv_out_freq(freq, fstride)

    def state_specs(self) -> tuple[StateSpec, ...]:
        return (StateSpec(self.name, self.conv.buffer_shape(self.freq)),) if self.conv.kernel_t > 1 else ()

    def forward(self, x: Tensor, state: Mapping[str, Tensor], new_state: TensorDict) -> Tensor:
        """x [B, C_in, T, F] -> [B, C_out, T, F_out]; writes its new buffer into ``new_state``."""
        if self.conv.kernel_t > 1:
            x, new_state[self.name] = self.conv(x, state[self.name], state.get(STAGE_RUNS))
        else:
            x, _ = self.conv(x)
        if self.pointwise is not None:
            x = self.pointwise(x)
        if self.act == "relu":
            return torch.relu(x)
        if self.act == "sigmoid":
            return torch.sigmoid(x)
        return x


def upsample_freq2(x: Tensor) -> Tensor:
    """[B, C, T, F] -> [B, C, T, 2F] by repeating each bin (nearest neighbour)."""
    return F.interpolate(x, scale_factor=(1.0, 2.0), mode="nearest")


class SqueezedGRU(nn.Module):
    """DFN3's SqueezedGRU_S: grouped linear in (+ReLU) -> GRU -> optional grouped linear out
    (+ReLU). State ``<name>_gru`` [B, layers, hidden]."""

    def __init__(
        self,
        name: str,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        num_layers: int = 1,
        groups: int = 1,
    ):
        super().__init__()
        self.name = name
        self.linear_in = GroupedLinear(input_size, hidden_size, groups)
        self.gru = GRU(hidden_size, hidden_size, num_layers)
        self.linear_out = GroupedLinear(hidden_size, output_size, groups) if output_size else None
        self.output_size = output_size or hidden_size

    def state_specs(self) -> tuple[StateSpec, ...]:
        return (StateSpec(f"{self.name}_gru", (1, self.gru.num_layers, self.gru.hidden_size)),)

    def _out(self, x: Tensor) -> Tensor:
        return x if self.linear_out is None else torch.relu(self.linear_out(x))

    def forward(self, x: Tensor, state: Mapping[str, Tensor]) -> tuple[Tensor, TensorDict]:
        y, h = self.gru(torch.relu(self.linear_in(x)), state[f"{self.name}_gru"])
        return self._out(y), {f"{self.name}_gru": h}

    def step(self, x: Tensor, state: Mapping[str, Tensor]) -> tuple[Tensor, TensorDict]:
        y, h = self.gru.step(torch.relu(self.linear_in(x)), state[f"{self.name}_gru"], state.get(STAGE_RUNS))
        return self._out(y), {f"{self.name}_gru": h}


def make_backbone(
    params,
    name: str,
    input_size: int,
    hidden_size: int,
    output_size: int | None,
    num_layers: int,
    groups: int | None = None,
) -> SqueezedMamba | SqueezedGRU:
    """The sequence model ``params.backbone_of(name)`` ('mamba' or 'gru') of component ``name``;
    its squeeze linears have ``groups`` groups (default ``params.linear_groups``)."""
    groups = params.linear_groups if groups is None else groups
    if params.backbone_of(name) == "gru":
        return SqueezedGRU(name, input_size, hidden_size, output_size, num_layers, groups)
    return SqueezedMamba(
        name,
        input_size,
        hidden_size,
        output_size,
        num_layers,
        groups,
        params.mamba_d_state,
        params.mamba_d_conv,
        params.mamba_expand,
    )


def run_backbone(
    backbone: nn.Module, x: Tensor, state: Mapping[str, Tensor], new_state: TensorDict, step: bool
) -> Tensor:
    """x [B, T, I] -> [B, T, O]; ``step`` (T == 1) uses the exact single-frame recurrence."""
    if step:
        y, upd = backbone.step(x[:, 0], state)
        y = y.unsqueeze(1)
    else:
        y, upd = backbone(x, state)
    new_state.update(upd)
    return y
