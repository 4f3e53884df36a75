"""Parameter and multiply-accumulate (MAC) counts of an ``EnhancementModel``.

MACs are counted by temporary forward hooks (registered here, removed before returning; the
models themselves hold none) while the sequence form runs a few frames:

- Linear, GroupedLinear: outputs x inputs-per-output; Conv1d/Conv2d: outputs x (C_in/groups)
  x kernel size; transposed convs: inputs x (C_out/groups) x kernel size; GRU (sequence form):
  3 x hidden x (input + hidden) per layer and frame;
- Mamba's selective SSM (``MambaBlock``, beyond its own linears): 3 x D x N per frame
  (decay x state, input x B, state . C), and its depthwise causal conv, D x K; the within-frame attention of ``DomainFusion``:
  2 x K x K x attention width per frame.
Elementwise activations, norms, exp/softplus and the runtime's own work (STFT, ERB mask, the
deep filter itself: 4 x F x O real MACs per frame) are not included.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dfnet4_sdk.models.base import EnhancementModel
from dfnet4_sdk.models.layers import GroupedLinear


def count_parameters(model: nn.Module) -> dict[str, int]:
    """{component: parameters, ..., "total": ...} for an EnhancementModel (else just total)."""
    out = {}
    if isinstance(model, EnhancementModel):
        out = {name: sum(p.numel() for p in c.parameters()) for name, c in model.components.items()}
    out["total"] = sum(p.numel() for p in model.parameters())
    return out


def _macs_rules() -> list[tuple[type, Callable]]:
    from dfnet4_sdk.models.dfnet3 import ConvTransposeNormAct
    from dfnet4_sdk.models.hybrid_encoder import DomainFusion
    from dfnet4_sdk.models.mamba import MambaBlock

    def linear(m, inp, out):
        return out.numel() * m.in_features

    def grouped(m, inp, out):
        return out.numel() * (m.input_size // m.groups)

    def conv(m, inp, out):
        k = 1
        for s in m.kernel_size:
            k *= s
        return out.numel() * (m.in_channels // m.groups) * k

    def conv_transpose(m, inp, out):
        k = 1
        for s in m.kernel_size:
            k *= s
        return inp[0].numel() * (m.out_channels // m.groups) * k

    def upsample(m, inp, out):
        # The depthwise x2 upsampling runs its transposed conv's weights as products, so the
        # ConvTranspose2d hook never fires there; the same MACs are counted here instead.
        return conv_transpose(m.convt, inp, None) if m._is_depthwise_up2() else 0

    def gru(m, inp, out):
        y = out[0]  # [B, T, H]
        frames, h, total = y.shape[0] * y.shape[1], m.hidden_size, 0
        for layer in range(m.num_layers):
            i = m.input_size if layer == 0 else h
            total += 3 * h * (i + h)
        return frames * total

    def mamba(m, inp, out):
        # The SSM, plus the depthwise causal conv: its weights live in m.conv1d, but the
        # sequence form applies them as shifted multiply-adds, so the Conv1d hook never fires.
        y = out[0]  # [B, T, M]
        return y.shape[0] * y.shape[1] * (3 * m.d_inner * m.d_state + m.d_inner * m.d_conv)

    def fusion(m, inp, out):
        return out.shape[0] * out.shape[1] * 2 * m.num_domains**2 * m.att_dim

    return [
        (nn.Linear, linear),
        (GroupedLinear, grouped),
        (nn.Conv1d, conv),
        (nn.Conv2d, conv),
        (nn.ConvTranspose1d, conv_transpose),
        (nn.ConvTranspose2d, conv_transpose),
        (ConvTransposeNormAct, upsample),
        (nn.GRU, gru),
        (MambaBlock, mamba),
        (DomainFusion, fusion),
    ]


@torch.no_grad()
def count_macs_per_frame(model: EnhancementModel, frames: int = 8) -> dict[str, float]:
    """{component: MACs per frame, ..., "total": ...} from one sequence pass of ``frames``."""
    d = model.dsp
    shapes = {
        "feat_erb": (1, 1, frames, d.nb_erb),
        "feat_spec": (1, 2, frames, d.nb_df),
        "frame_samples": (1, 1, frames, d.hop_size_samples),
    }
    inputs = {k: torch.randn(shapes[k]) for k in model.frame_input_names}
    counts = {name: 0 for name in model.components}
    handles = []

    def hook_for(rule, component):
        def hook(module, inp, out):
            counts[component] += rule(module, inp, out)

        return hook

    rules = _macs_rules()
    for name, comp in model.components.items():
        for module in comp.modules():
            for cls, rule in rules:
                if isinstance(module, cls):
                    handles.append(module.register_forward_hook(hook_for(rule, name)))
                    break
    was_training = model.training
    try:
        model.eval()
        model.forward_components(inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {name: c / frames for name, c in counts.items()}
    out["total"] = sum(out.values())
    return out


def count_macs_per_second(model: EnhancementModel) -> float:
    """MACs per second of audio: MACs per frame x frames per second (sr / hop)."""
    frames_per_second = model.dsp.sample_rate_hz / model.dsp.hop_size_samples
    return count_macs_per_frame(model)["total"] * frames_per_second


def preset_table() -> str:
    """Markdown table of every DfNet4 preset: parameters and MACs per component and per second
    (the table in docs/ARCHITECTURE.md; a test keeps the two identical)."""
    from dfnet4_sdk.models.dfnet4 import PRESETS, DfNet4

    rows = [
        "| preset | family | parameters (enc / erb_dec / df_dec) | total | MMAC per second of audio |",
        "|---|---|---|---|---|",
    ]
    for name in PRESETS:
        torch.manual_seed(0)
        model = DfNet4.from_preset(name)
        n = count_parameters(model)
        macs = count_macs_per_second(model)
        rows.append(
            f"| {name} | {model.family} | {n['enc']:,} / {n['erb_dec']:,} / {n['df_dec']:,} | "
            f"{n['total']:,} | {macs / 1e6:.1f} |"
        )
    return "\n".join(rows)
