"""The per-hop stages after the model, in numpy: the one home of each formula.

    lsnr -> gating -> ERB mask on frame t-L -> deep filter over frames t-L-(O-1-Ld) .. t-L+Ld
    -> post-filter -> attenuation limit            (then dsp.FrontEnd's synthesis)

Every function takes a leading frame axis T and any axes before it ([..., T, ...]): the stream
calls them with T = 1 each hop, the offline path with T = a block of frames, and the numbers of
a frame do not depend on which. Their torch twins are in ``dfnet4_sdk.models.spectral`` (the
fused frame graph and the training form), tied to these by ``tests/test_stages.py``.

The deep filter reads a spectrum *window*: [..., T + O - 1, F] frames, oldest first, from the
first step's oldest tap (frame t-L-(O-1-Ld) of step 0) to the last step's newest tap. Step t's
taps are window[t .. t + O - 1] and its noisy frame t-L is window[t + past], past = O-1-Ld.

Letters: T frames, F = fft/2 + 1 bins, E ERB bands, D deep-filtered bins, O taps (df_order).
Spectra are complex64, masks and gains float32, this mirrors libDF's tract.rs (0.5.6).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

POST_FILTER_EPS = 1e-12
POST_FILTER_CHUNK_BINS = 4  # libDF walks the bins in chunks of 4 and skips the last F % 4


class Gates(NamedTuple):
    """libDF's stage selection for each frame (boolean arrays shaped like the local SNR)."""

    apply_erb_mask: np.ndarray  # the ERB mask runs (and the post-filter, when on)
    apply_zero_mask: np.ndarray  # noise only: the frame is zeroed
    apply_df: np.ndarray  # the deep filter runs (implies apply_erb_mask)


def gating(lsnr_db, thresholds_db) -> Gates:
    """libDF's stage selection for local SNRs of any shape; ``thresholds_db`` is [min_db_thresh,
    max_db_erb_thresh, max_db_df_thresh] (``StreamOptions.gating_thresholds_db``):

        lsnr < min             -> zero mask, no DF      (noise only)
        lsnr > max_erb         -> nothing               (clean speech)
        lsnr > max_df          -> ERB mask only
        otherwise (NaN too)    -> ERB mask and DF
    """
    lsnr = np.asarray(lsnr_db, dtype=np.float32)
    low, max_erb, max_df = np.asarray(thresholds_db, dtype=np.float32).tolist()  # float32 values
    zeros = lsnr < low
    no_erb = zeros | (lsnr > max_erb)  # written with ">" so that NaN runs every stage
    return Gates(~no_erb, zeros, ~(no_erb | (lsnr > max_df)))


def erb_gains(erb_mask: np.ndarray | None, erb_widths: np.ndarray, gates: Gates | None = None) -> np.ndarray:
    """[..., T, E] band gains -> [..., T, F] bin gains (each band's gain repeated over its
    ``erb_widths`` bins). With ``gates``, a frame without the ERB stage gets 0 (noise only) or 1
    (clean: unchanged) everywhere; ``erb_mask`` may then be None (no frame runs the stage)."""
    if erb_mask is None:
        if gates is None or np.any(gates.apply_erb_mask):
            raise ValueError("erb_mask is None but some frame runs the ERB stage")
        return (~gates.apply_zero_mask).astype(np.float32)[..., None]  # broadcasts over bins
    # np.repeat by band width, not a matmul or indexing: the same gains, 2x faster.
    gains = np.repeat(np.asarray(erb_mask, dtype=np.float32), erb_widths, axis=-1)
    if gates is not None and not gates.apply_erb_mask.all():  # (all: the usual hop, no copy)
        gains = np.where(gates.apply_erb_mask[..., None], gains, (~gates.apply_zero_mask).astype(np.float32)[..., None])
    return gains


def df_taps(df_coefs: np.ndarray, df_order: int) -> np.ndarray:
    """Graph layout [..., D, 2*O] float32 (tap, re/im in the last axis, tap 0 the oldest frame) ->
    [..., D, O] complex64 (a view when the array is contiguous float32)."""
    coefs = np.ascontiguousarray(df_coefs, dtype=np.float32)
    return coefs.view(np.complex64).reshape(*coefs.shape[:-1], df_order)


def deep_filter(window: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """window [..., T + O - 1, >= D] complex, taps [..., T, D, O] complex -> [..., T, D] complex64:
    out[t, f] = sum_o taps[t, f, o] * window[t + o, f] (see the module docstring)."""
    nb_frames, nb_df, order = taps.shape[-3:]
    if window.shape[-2] != nb_frames + order - 1 or window.shape[-1] < nb_df:
        raise ValueError(f"deep_filter: window {window.shape} does not fit taps {taps.shape} (needs [..., T + O - 1, >= D])")
    if nb_frames == 1:  # the stream's hop: the window is the one frame's taps
        frames = window[..., :, None, :nb_df]
    else:  # [..., O, T, D]: frame t + o at [o, t], a view
        frames = np.swapaxes(np.lib.stride_tricks.sliding_window_view(window[..., :nb_df], nb_frames, axis=-2), -1, -2)
    # Summed over the outer tap axis: tap by tap in order, the same numbers for any T.
    lead = tuple(range(taps.ndim - 3))
    taps_first = taps.transpose(*lead, taps.ndim - 1, taps.ndim - 3, taps.ndim - 2)  # [..., O, T, D]
    return (frames * taps_first).sum(axis=-3, dtype=np.complex64)


def mask_and_filter(
    window: np.ndarray, erb_mask: np.ndarray | None, taps: np.ndarray | None, erb_widths: np.ndarray,
    past: int, gates: Gates | None = None,
) -> np.ndarray:
    """ERB mask and deep filter of T frames: window [..., T + O - 1, F], erb_mask [..., T, E],
    taps [..., T, D, O] -> enhanced [..., T, F] complex64. ``past`` = O - 1 - Ld places the
    noisy frames in the window. With ``gates`` (``gating``), frames whose stages are off get what
    libDF gives them; ``erb_mask`` / ``taps`` may be None when no frame runs that stage."""
    if taps is not None:
        nb_frames = taps.shape[-3]
    else:  # the window still holds T + O - 1 frames; only the noisy ones are read
        nb_frames = erb_mask.shape[-2] if erb_mask is not None else np.shape(gates.apply_erb_mask)[-1]
    noisy = window[..., past : past + nb_frames, :]
    enhanced = noisy * erb_gains(erb_mask, erb_widths, gates)
    if taps is not None:
        nb_df = taps.shape[-2]
        filtered = deep_filter(window, taps)
        if gates is not None and not gates.apply_df.all():
            filtered = np.where(gates.apply_df[..., None], filtered, enhanced[..., :nb_df])
        enhanced[..., :nb_df] = filtered
    elif gates is not None and np.any(gates.apply_df):
        raise ValueError("taps is None but some frame runs the deep filter")
    return enhanced.astype(np.complex64, copy=False)


def post_filter(noisy: np.ndarray, enhanced: np.ndarray, beta: float) -> np.ndarray:
    """libDF's spectral post-filter (``post_filter`` in lib.rs) on [..., F], float32 arithmetic:
    g = clamp(|Y| / (|X| + 1e-12), 1e-12, 1), pf = (1+beta) / (1 + beta / sin^2(pi*g/2)),
    returns Y * pf. As libDF, it walks the bins in chunks of 4 and leaves the last F % 4 bins
    (the Nyquist bin at 481 bins) untouched."""
    enhanced = np.asarray(enhanced, dtype=np.complex64)
    n = enhanced.shape[-1] // POST_FILTER_CHUNK_BINS * POST_FILTER_CHUNK_BINS
    noisy_mag = np.abs(np.asarray(noisy, dtype=np.complex64)[..., :n])
    low = enhanced[..., :n]
    eps = np.float32(POST_FILTER_EPS)
    gain = np.clip(np.abs(low) / (noisy_mag + eps), eps, np.float32(1.0))
    gain_sin = gain * np.sin(gain * np.float32(np.pi / 2))
    beta = np.float32(beta)
    pf = ((np.float32(1.0) + beta) * gain / (np.float32(1.0) + beta * (gain / gain_sin) ** 2)) / gain
    out = enhanced.copy()
    out[..., :n] = low * pf
    return out


def attenuation_limit(noisy: np.ndarray, enhanced: np.ndarray, atten_lim_gain: float | None) -> np.ndarray:
    """libDF's attenuation limit: mix ``atten_lim_gain`` (linear, ``StreamOptions.atten_lim_gain``)
    of the noisy spectrum back in; None is no limit."""
    if atten_lim_gain is None:
        return enhanced
    return enhanced * np.float32(1.0 - atten_lim_gain) + noisy * np.float32(atten_lim_gain)


def finish(
    noisy: np.ndarray, enhanced: np.ndarray, post_filter_beta: float, atten_lim_gain: float | None,
    gates: Gates | None = None,
) -> np.ndarray:
    """Post-filter (on frames that ran the ERB stage, when beta > 0) then attenuation limit, on
    [..., T, F] spectra."""
    if post_filter_beta > 0:
        filtered = post_filter(noisy, enhanced, post_filter_beta)
        if gates is None or gates.apply_erb_mask.all():
            enhanced = filtered
        else:
            enhanced = np.where(gates.apply_erb_mask[..., None], filtered, enhanced)
    return attenuation_limit(noisy, enhanced, atten_lim_gain)
