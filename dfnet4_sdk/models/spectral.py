"""Torch twins of the spectral operations in ``dfnet4_sdk.dsp`` (used where gradients flow:
the training form of the models). Spectra are real tensors with re/im on the last axis."""

from __future__ import annotations

import torch
from torch import Tensor

from dfnet4_sdk import dsp
from dfnet4_sdk.params import DspParams


def pad_time_end(x: Tensor, frames: int, time_axis: int) -> Tensor:
    """Append ``frames`` zero frames along time (the look-ahead the last frames never get)."""
    if frames == 0:
        return x
    tail = x.new_zeros(*x.shape[:time_axis], frames, *x.shape[time_axis + 1 :])
    return torch.cat([x, tail], dim=time_axis)


def erb_widths_tensor(params: DspParams) -> Tensor:
    return torch.as_tensor(dsp.erb_band_widths(params), dtype=torch.long)


def apply_erb_mask(spec: Tensor, erb_mask: Tensor, widths: Tensor) -> Tensor:
    """spec [B, 1, T, F_all, 2] * erb_mask [B, 1, T, E] expanded to bins by repetition."""
    gains = torch.repeat_interleave(erb_mask, widths.to(erb_mask.device), dim=-1)
    return spec * gains.unsqueeze(-1)


def deep_filter(spec: Tensor, df_coefs: Tensor, df_order: int, df_lookahead_frames: int) -> Tensor:
    """Complex multi-frame filter on the lowest F bins.

    spec [B, 1, T, F_all, 2]; df_coefs [B, T, F, 2*O] with (tap, re/im) in the last axis,
    tap 0 the oldest frame t-(O-1-lookahead). Returns [B, 1, T, F, 2].
    """
    b, _, t, _, _ = spec.shape
    nb_df = df_coefs.shape[2]
    past = df_order - 1 - df_lookahead_frames
    x = spec[:, 0, :, :nb_df, :]  # [B, T, F, 2]
    x = torch.cat([x.new_zeros(b, past, nb_df, 2), x, x.new_zeros(b, df_lookahead_frames, nb_df, 2)], dim=1)
    windows = x.unfold(1, df_order, 1)  # [B, T, F, 2, O]
    coefs = df_coefs.reshape(b, t, nb_df, df_order, 2)
    xr, xi = windows[:, :, :, 0], windows[:, :, :, 1]  # [B, T, F, O]
    cr, ci = coefs[..., 0], coefs[..., 1]
    out_r = (xr * cr - xi * ci).sum(-1)
    out_i = (xr * ci + xi * cr).sum(-1)
    return torch.stack([out_r, out_i], dim=-1).unsqueeze(1)
