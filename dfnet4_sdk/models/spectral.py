"""The per-hop stages in torch: the twins of ``dfnet4_sdk.stages`` (gating, ERB mask, deep filter,
post-filter, attenuation limit) and of ``dsp.FrontEnd.features_frame``, one home for the fused
frame graph (``models/frame.py``, exported) and the training form (``EnhancementModel.forward``,
``training/distill.py``). ``tests/test_stages.py`` ties each to its numpy twin frame by frame.

Layout: a spectrum is two real tensors (re, im) of the same shape [..., T, F], so each caller
keeps its own memory layout (the frame graph planar rows, the training form [..., F, 2]) and
every op stays a plain one that ONNX, LiteRT and CoreML convert. Like the numpy functions, the
deep filter reads a window of T + O - 1 frames, oldest first; step t's noisy frame is window
frame t + past, past = O - 1 - Ld. Letters as in ``stages``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from dfnet4_sdk import dsp, stages
from dfnet4_sdk.params import DspParams


def pad_time_end(x: Tensor, frames: int, time_axis: int) -> Tensor:
    """Append ``frames`` zero frames along time (the look-ahead the last frames never get)."""
    if frames == 0:
        return x
    tail = x.new_zeros(*x.shape[:time_axis], frames, *x.shape[time_axis + 1 :])
    return torch.cat([x, tail], dim=time_axis)


def erb_widths_tensor(params: DspParams) -> Tensor:
    return torch.as_tensor(dsp.erb_band_widths(params), dtype=torch.long)


def erb_inverse_tensor(params: DspParams) -> Tensor:
    """[E, F] float32 0/1 matrix: ``mask @ inv`` copies each band's gain to its bins."""
    return torch.from_numpy(dsp.erb_inverse_filterbank(params))


# -- features (one frame; the exponential means are states) --------------------------------------


def features(
    re: Tensor, im: Tensor, erb_norm: Tensor, unit_norm: Tensor, erb_fb: Tensor, alpha: float, nb_df: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``dsp.FrontEnd.features_frame`` in torch: spectrum (re, im) [..., F], the two norm states
    [..., E] and [..., D], the band-mean filterbank erb_fb [F, E] -> (feat_erb [..., E], feat_spec
    re [..., D], im [..., D], new erb_norm, new unit_norm)."""
    power = re * re + im * im
    erb_db = torch.log10(torch.matmul(power, erb_fb) + dsp.ERB_POWER_EPS) * 10.0
    erb_norm = erb_db * (1.0 - alpha) + erb_norm * alpha
    unit_norm = torch.sqrt(power[..., :nb_df]) * (1.0 - alpha) + unit_norm * alpha
    feat_erb = (erb_db - erb_norm) / dsp.ERB_FEATURE_SCALE_DB
    scale = torch.rsqrt(unit_norm)
    return feat_erb, re[..., :nb_df] * scale, im[..., :nb_df] * scale, erb_norm, unit_norm


# -- the stages after the model --------------------------------------------------------------------


class Gates(NamedTuple):
    """``stages.Gates`` as boolean tensors shaped like the local SNR."""

    apply_erb_mask: Tensor
    apply_zero_mask: Tensor
    apply_df: Tensor


def gating(lsnr: Tensor, thresholds: Tensor) -> Gates:
    """``stages.gating``: lsnr [...] dB, thresholds [3] = [min, max_erb, max_df] dB."""
    zeros = lsnr < thresholds[0]
    no_erb = zeros | (lsnr > thresholds[1])  # written with ">" so that NaN runs every stage
    return Gates(~no_erb, zeros, ~(no_erb | (lsnr > thresholds[2])))


def erb_gains(erb_mask: Tensor, erb_inv: Tensor, gates: Gates | None = None) -> Tensor:
    """``stages.erb_gains``: [..., T, E] @ erb_inv [E, F] -> [..., T, F] (a matmul with the 0/1
    matrix, exact, where the numpy twin repeats: ``repeat_interleave`` does not export)."""
    gains = torch.matmul(erb_mask, erb_inv)
    if gates is not None:
        ungated = (~gates.apply_zero_mask).to(gains.dtype).unsqueeze(-1)
        gains = torch.where(gates.apply_erb_mask.unsqueeze(-1), gains, ungated)
    return gains


def df_coefs_planar(df_coefs: Tensor, df_order: int) -> tuple[Tensor, Tensor]:
    """Graph layout [..., T, D, 2*O] (tap, re/im last) -> (re, im) taps, each [..., O, T, D]."""
    lead = df_coefs.shape[:-3]
    n = len(lead)
    c = df_coefs.reshape(*lead, *df_coefs.shape[-3:-1], df_order, 2)  # [..., T, D, O, 2]
    c = c.permute(*range(n), n + 3, n + 2, n, n + 1)  # [..., 2, O, T, D]
    return c.select(n, 0), c.select(n, 1)


def _tap_windows(x: Tensor, df_order: int) -> Tensor:
    """[..., T + O - 1, D] -> [..., O, T, D]: frame t + o at [o, t] (static slices, no unfold)."""
    nb_frames = x.shape[-2] - df_order + 1
    if nb_frames == 1:
        return x.unsqueeze(-2)
    return torch.stack([x[..., o : o + nb_frames, :] for o in range(df_order)], dim=-3)


def deep_filter(win_re: Tensor, win_im: Tensor, taps_re: Tensor, taps_im: Tensor) -> tuple[Tensor, Tensor]:
    """``stages.deep_filter``: window (re, im) [..., T + O - 1, >= D], taps (re, im) [..., O, T, D]
    (``df_coefs_planar``) -> filtered (re, im) [..., T, D]."""
    order, nb_df = taps_re.shape[-3], taps_re.shape[-1]
    xr, xi = _tap_windows(win_re[..., :nb_df], order), _tap_windows(win_im[..., :nb_df], order)
    return (xr * taps_re - xi * taps_im).sum(-3), (xr * taps_im + xi * taps_re).sum(-3)


def mask_and_filter(
    win_re: Tensor, win_im: Tensor, erb_mask: Tensor, df_coefs: Tensor, erb_inv: Tensor, df_order: int, past: int,
    gates: Gates | None = None,
) -> tuple[Tensor, Tensor]:
    """``stages.mask_and_filter``: window (re, im) [..., T + O - 1, F], erb_mask [..., T, E],
    df_coefs [..., T, D, 2*O] -> enhanced (re, im) [..., T, F]. With ``gates``, a stage that does
    not run leaves the frame as libDF does (every value is computed, then selected)."""
    nb_frames, nb_df = win_re.shape[-2] - df_order + 1, df_coefs.shape[-2]
    noisy_re, noisy_im = win_re[..., past : past + nb_frames, :], win_im[..., past : past + nb_frames, :]
    return mask_and_filter_parts(noisy_re, noisy_im, win_re[..., :nb_df], win_im[..., :nb_df], erb_mask, df_coefs,
                                 erb_inv, df_order, gates)


def mask_and_filter_parts(
    noisy_re: Tensor, noisy_im: Tensor, low_re: Tensor, low_im: Tensor, erb_mask: Tensor, df_coefs: Tensor,
    erb_inv: Tensor, df_order: int, gates: Gates | None = None,
) -> tuple[Tensor, Tensor]:
    """``mask_and_filter`` on the two parts of the window it reads: the frames it masks (re, im)
    [..., T, F] (window frames past .. past + T - 1) and the window's deep-filtered bins (re, im)
    [..., T + O - 1, D]. The fused frame graph passes these so that it never copies the
    window's upper bins, which only its masked frame needs."""
    gains = erb_gains(erb_mask, erb_inv, gates)
    masked_re, masked_im = noisy_re * gains, noisy_im * gains
    taps_re, taps_im = df_coefs_planar(df_coefs, df_order)
    nb_df = taps_re.shape[-1]
    low_re, low_im = deep_filter(low_re, low_im, taps_re, taps_im)
    if gates is not None:
        use_df = gates.apply_df.unsqueeze(-1)
        low_re = torch.where(use_df, low_re, masked_re[..., :nb_df])
        low_im = torch.where(use_df, low_im, masked_im[..., :nb_df])
    return torch.cat([low_re, masked_re[..., nb_df:]], dim=-1), torch.cat([low_im, masked_im[..., nb_df:]], dim=-1)


def post_filter(noisy_re: Tensor, noisy_im: Tensor, re: Tensor, im: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """``stages.post_filter`` (libDF's, the last F % 4 bins untouched) on (re, im) [..., F]."""
    n = re.shape[-1] // stages.POST_FILTER_CHUNK_BINS * stages.POST_FILTER_CHUNK_BINS
    eps = stages.POST_FILTER_EPS
    noisy_mag = torch.sqrt(noisy_re[..., :n] ** 2 + noisy_im[..., :n] ** 2)
    gain = torch.clamp(torch.sqrt(re[..., :n] ** 2 + im[..., :n] ** 2) / (noisy_mag + eps), eps, 1.0)
    gain_sin = gain * torch.sin(gain * (math.pi / 2))
    pf = ((1.0 + beta) * gain / (1.0 + beta * (gain / gain_sin) ** 2)) / gain
    return torch.cat([re[..., :n] * pf, re[..., n:]], dim=-1), torch.cat([im[..., :n] * pf, im[..., n:]], dim=-1)


def attenuation_limit(noisy: Tensor, enhanced: Tensor, atten_lim_gain: float | None) -> Tensor:
    """``stages.attenuation_limit`` on one real tensor (call it for re and for im)."""
    if atten_lim_gain is None:
        return enhanced
    return enhanced * (1.0 - atten_lim_gain) + noisy * atten_lim_gain


def finish(
    noisy_re: Tensor, noisy_im: Tensor, re: Tensor, im: Tensor, post_filter_beta: float,
    atten_lim_gain: float | None, gates: Gates | None = None,
) -> tuple[Tensor, Tensor]:
    """``stages.finish``: post-filter (frames that ran the ERB stage, beta > 0), attenuation limit."""
    if post_filter_beta > 0:
        pf_re, pf_im = post_filter(noisy_re, noisy_im, re, im, post_filter_beta)
        if gates is None:
            re, im = pf_re, pf_im
        else:
            use = gates.apply_erb_mask.unsqueeze(-1)
            re, im = torch.where(use, pf_re, re), torch.where(use, pf_im, im)
    return attenuation_limit(noisy_re, re, atten_lim_gain), attenuation_limit(noisy_im, im, atten_lim_gain)


def enhance_sequence(
    spec: Tensor, erb_mask: Tensor, df_coefs: Tensor, params: DspParams, df_order: int, df_lookahead_frames: int
) -> Tensor:
    """The training form's mask and deep filter over a whole sequence (zero frames beyond its ends):
    spec [B, 1, T, F, 2], erb_mask [B, 1, T, E], df_coefs [B, T, D, 2*O] -> [B, 1, T, F, 2]."""
    past = df_order - 1 - df_lookahead_frames
    x = spec[:, 0]  # [B, T, F, 2]
    before, after = (x.new_zeros(x.shape[0], n, *x.shape[2:]) for n in (past, df_lookahead_frames))
    window = torch.cat([before, x, after], dim=1)  # [B, T + O - 1, F, 2]
    erb_inv = erb_inverse_tensor(params).to(device=spec.device, dtype=spec.dtype)
    re, im = mask_and_filter(window[..., 0], window[..., 1], erb_mask[:, 0], df_coefs, erb_inv, df_order, past)
    return torch.stack([re, im], dim=-1).unsqueeze(1)
