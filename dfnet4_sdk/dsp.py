"""libDF's front-end in numpy: STFT, ERB features, unit-norm features (the stages after the
model, mask to attenuation limit, are in ``dfnet4_sdk.stages``; whole-signal wrappers here).

Everything here reproduces libDF 0.5.6 (``libdf``, PyPI deepfilterlib), which the tests use as
the oracle. Two forms share one implementation of each formula:

- whole-signal functions (``stft``, ``istft``, ``erb_features`` ...) for files and training;
- ``FrontEnd`` (constants, shared, read-only) + ``FrontEndState`` (one stream's memories) with
  one call per hop for streaming. Feeding the same audio hop by hop gives the same numbers;
- ``FrontEnd.analysis_into`` / ``synthesis_into``: one hop of many streams into buffers the
  caller owns (``StreamPool``'s bound graph), each row's numbers those of the one-stream hop.

Over 400 lines: the frame, whole-signal and many-stream forms share the formulas kept here;
split into modules, each would repeat them.

Shapes: N samples, T frames, F = fft_size/2 + 1 bins, E = nb_erb bands, D = nb_df bins,
O = deep-filter order (taps). Audio is float32, spectra complex64, features float32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import numpy as np

from dfnet4_sdk import stages
from dfnet4_sdk.errors import AudioInputError, ConfigError
from dfnet4_sdk.params import DspParams

ERB_NORM_INIT_DB = (-60.0, -90.0)  # libDF MEAN_NORM_INIT: state of the ERB exponential mean
UNIT_NORM_INIT = (0.001, 0.0001)  # libDF UNIT_NORM_INIT: state of the complex unit norm
ERB_POWER_EPS = 1e-10  # added to the band power before log10
ERB_FEATURE_SCALE_DB = 40.0  # normalised dB are divided by this
# numpy's batched float32 (i)rfft costs ~2.2 us per 960-point frame up to ~100 KB a call and
# then jumps to ~7 us, output buffer given or not (measured, numpy 2.4: 26 rows 2.15 us, 27 rows
# 6.7 us, in fresh processes): long signals go through in blocks of this many frames.
FFT_ROWS_PER_CALL = 16
# numpy >= 2 implements its FFTs as gufuncs; called directly, one 960-point frame costs ~4.8 us
# instead of ~9.5 us through np.fft's wrapper (argument handling, output allocation). Per hop
# that is two FFTs, a quarter of the stream's own work. Same pocketfft, same numbers.
try:
    from numpy.fft._pocketfft_umath import irfft as _irfft, rfft_n_even as _rfft_even
except ImportError:  # numpy < 2
    _irfft = _rfft_even = None
_ONE = np.float32(1.0)


def _rfft_rows(frames: np.ndarray, out: np.ndarray) -> None:
    """rfft of each row of ``frames`` [R, fft] (fft even) into ``out`` [R, F] complex64."""
    if _rfft_even is not None:
        _rfft_even(frames, _ONE, out=out)
    else:
        out[...] = np.fft.rfft(frames, axis=-1)


def _irfft_rows(spec: np.ndarray, out: np.ndarray) -> None:
    """libDF's unnormalised inverse rfft of each row of ``spec`` [R, F] into ``out`` [R, fft] float32."""
    if _irfft is not None:
        _irfft(spec, _ONE, out=out)
    else:
        out[...] = np.fft.irfft(spec, n=out.shape[-1], axis=-1, norm="forward")


EMA_BLOCK_FRAMES = 64  # frames per matmul of the whole-signal exponential means


# ---------------------------------------------------------------------------------------------
# Constants: window, ERB bands, filterbanks


def vorbis_window(fft_size: int) -> np.ndarray:
    """libDF's analysis = synthesis window [fft_size] float32:
    w[n] = sin(pi/2 * sin^2(pi * (n + 0.5) / fft_size)), computed in float64 as libDF does."""
    n = np.arange(fft_size, dtype=np.float64)
    inner = np.sin(0.5 * np.pi * (n + 0.5) / (fft_size // 2))
    return np.sin(0.5 * np.pi * inner**2).astype(np.float32)


def _freq_to_erb(freq_hz: np.ndarray | float) -> np.ndarray | float:
    return 9.265 * np.log1p(np.asarray(freq_hz, dtype=np.float64) / (24.7 * 9.265))


def _erb_to_freq(erb: np.ndarray | float) -> np.ndarray | float:
    return 24.7 * 9.265 * (np.exp(np.asarray(erb, dtype=np.float64) / 9.265) - 1.0)


def erb_band_widths(params: DspParams) -> np.ndarray:
    """Number of STFT bins in each ERB band (libDF ``erb_fb``); sums to ``params.freq_bins``."""
    freq_width_hz = params.sample_rate_hz / params.fft_size
    erb_high = _freq_to_erb(params.sample_rate_hz / 2)
    step = erb_high / params.nb_erb
    widths = np.zeros(params.nb_erb, dtype=np.int64)
    prev_bin = 0
    bins_over = 0  # bins already given to earlier bands to enforce the minimum width
    for band in range(params.nb_erb):
        edge_bin = int(np.round(_erb_to_freq((band + 1) * step) / freq_width_hz))
        nb_bins = edge_bin - prev_bin - bins_over
        if nb_bins < params.min_nb_erb_freqs:
            bins_over = params.min_nb_erb_freqs - nb_bins
            nb_bins = params.min_nb_erb_freqs
        else:
            bins_over = 0
        widths[band] = nb_bins
        prev_bin = edge_bin
    widths[-1] += 1  # rfft has fft/2 + 1 bins
    widths[-1] -= max(int(widths.sum()) - params.freq_bins, 0)
    assert widths.sum() == params.freq_bins, widths
    return widths


def erb_inverse_filterbank(params: DspParams) -> np.ndarray:
    """[E, F] float32 0/1 matrix: ``mask @ inv`` copies each band's gain to its bins."""
    return _inverse_filterbank(erb_band_widths(params))


def _inverse_filterbank(widths: np.ndarray) -> np.ndarray:
    band_of_bin = np.repeat(np.arange(len(widths)), widths)
    return (np.arange(len(widths))[:, None] == band_of_bin[None, :]).astype(np.float32)


def erb_filterbank(params: DspParams) -> np.ndarray:
    """[F, E] float32 band-mean matrix: ``power @ fb`` is the mean power of each band."""
    widths = erb_band_widths(params).astype(np.float32)
    return np.ascontiguousarray(erb_inverse_filterbank(params).T / widths[None, :])


def _libdf_linspace(start: float, stop: float, num: int) -> np.ndarray:
    # ndarray's linspace in float32 (start + i * step), bit-equal to libdf's norm initial states.
    step = (np.float32(stop) - np.float32(start)) / np.float32(max(num - 1, 1))
    return np.float32(start) + np.arange(num, dtype=np.float32) * step


# ---------------------------------------------------------------------------------------------
# Frame-at-a-time form: shared constants + one stream's state


@dataclass
class FrontEndState:
    """One stream's front-end memories, all float32 and updated in place."""

    analysis_memory: np.ndarray  # [fft - hop] last input samples
    synthesis_memory: np.ndarray  # [fft - hop] overlap-add tail
    erb_norm_state: np.ndarray  # [E] exponential mean of the band dB
    unit_norm_state: np.ndarray  # [D] exponential mean of |X| on the deep-filter bins

    @classmethod
    def initial(cls, params: DspParams, tables=None) -> "FrontEndState":
        """Zero memories and the norms at libDF's initial values, or at ``tables``' (a
        manifest's ``DspTables``: ``erb_norm_init``, ``spec_norm_init``) when given."""
        memory = params.fft_size - params.hop_size_samples
        if tables is None:
            erb_norm = _libdf_linspace(*ERB_NORM_INIT_DB, params.nb_erb)
            unit_norm = _libdf_linspace(*UNIT_NORM_INIT, params.nb_df)
        else:
            erb_norm = np.array(tables.erb_norm_init, dtype=np.float32)
            unit_norm = np.array(tables.spec_norm_init, dtype=np.float32)
        return cls(
            analysis_memory=np.zeros(memory, dtype=np.float32),
            synthesis_memory=np.zeros(memory, dtype=np.float32),
            erb_norm_state=erb_norm,
            unit_norm_state=unit_norm,
        )

    def copy(self) -> "FrontEndState":
        return FrontEndState(**{f.name: getattr(self, f.name).copy() for f in fields(self)})


class FrontEnd:
    """Precomputed constants of one ``DspParams``; holds no stream state (share it freely).

    Per hop: ``analysis_frame`` -> ``features_frame`` -> (model, then ``stages``: mask, deep
    filter ...) -> ``synthesis_frame``. The batch methods (``analysis``, ``features``,
    ``synthesis``) do the same on T frames at once and leave ``state`` where the frame form
    would; the whole-signal functions call them with a fresh state.
    """

    def __init__(self, params: DspParams, tables=None) -> None:
        """``tables``: a manifest's ``DspTables`` (ERB band widths, norm decay) to use instead of
        the values libDF derives from ``params`` (None)."""
        if params.fft_size != 2 * params.hop_size_samples:  # DspParams enforces it too
            raise ConfigError(f"FrontEnd needs fft_size == 2 * hop_size_samples, got {params}")
        # So both memories are exactly one hop: a frame is [memory, new hop] and overlap-add
        # adds the previous frame's second half to this frame's first half.
        self.params = params
        self.hop = params.hop_size_samples
        self.fft_size = params.fft_size
        self.nb_df = params.nb_df
        self.window = vorbis_window(params.fft_size)
        # libDF normalises in analysis only: wnorm = hop / fft / sum(w^2) = 2*hop/fft^2 = 1/960.
        self.analysis_scale = np.float32(
            params.hop_size_samples / params.fft_size / np.sum(self.window.astype(np.float64) ** 2)
        )
        # The normalisation folded into the window: one multiply per frame, not two.
        self._scaled_window = self.window * self.analysis_scale
        self.erb_widths = erb_band_widths(params) if tables is None else np.array(tables.erb_widths, dtype=np.int64)
        self.erb_inv_fb = _inverse_filterbank(self.erb_widths)
        self.erb_fb = np.ascontiguousarray(self.erb_inv_fb.T / self.erb_widths.astype(np.float32)[None, :])
        self.band_starts = np.concatenate(([0], np.cumsum(self.erb_widths)[:-1]))
        self.band_of_bin = np.repeat(np.arange(params.nb_erb), self.erb_widths)
        # libDF multiplies each bin's power by 1/width before summing the band.
        self._bin_weight = (np.float32(1.0) / self.erb_widths.astype(np.float32))[self.band_of_bin]
        self.norm_alpha = np.float32(params.norm_alpha if tables is None else tables.norm_alpha)
        self._one_minus_alpha = np.float32(1.0) - self.norm_alpha

    # -- shared formulas (any number of leading frame dims) -------------------------------------

    def _windowed_rfft(self, frames: np.ndarray) -> np.ndarray:
        """[..., fft] float32 -> [..., F] complex64: rfft(frame * w) * wnorm."""
        window = self._scaled_window
        if frames.ndim == 1 and _rfft_even is not None and self.fft_size % 2 == 0:
            return _rfft_even(frames * window, _ONE, out=np.empty(self.params.freq_bins, np.complex64))
        if frames.ndim == 1 or len(frames) <= FFT_ROWS_PER_CALL:
            return np.fft.rfft(frames * window, axis=-1).astype(np.complex64, copy=False)
        spec = np.empty((len(frames), self.params.freq_bins), dtype=np.complex64)
        windowed = np.empty((FFT_ROWS_PER_CALL, self.fft_size), dtype=np.float32)
        for start in range(0, len(frames), FFT_ROWS_PER_CALL):
            rows = frames[start : start + FFT_ROWS_PER_CALL]
            np.multiply(rows, window, out=windowed[: len(rows)])
            spec[start : start + FFT_ROWS_PER_CALL] = np.fft.rfft(windowed[: len(rows)], axis=-1)
        return spec

    def _windowed_irfft(self, spec: np.ndarray) -> np.ndarray:
        """[..., F] complex -> [..., fft] float32: unnormalised irfft (libDF's) times w."""
        spec = np.asarray(spec, dtype=np.complex64)
        if spec.ndim == 1 and _irfft is not None:
            frame = _irfft(spec, _ONE, out=np.empty(self.fft_size, np.float32))  # fct 1: libDF's unnormalised inverse
            frame *= self.window
            return frame
        if spec.ndim == 1 or len(spec) <= FFT_ROWS_PER_CALL:
            return np.fft.irfft(spec, n=self.fft_size, axis=-1, norm="forward") * self.window
        frames = np.empty((len(spec), self.fft_size), dtype=np.float32)
        for start in range(0, len(spec), FFT_ROWS_PER_CALL):
            rows = slice(start, start + FFT_ROWS_PER_CALL)
            np.multiply(np.fft.irfft(spec[rows], n=self.fft_size, axis=-1, norm="forward"), self.window, out=frames[rows])
        return frames

    # -- one hop of R streams into caller-owned buffers (nothing allocated) -----------------------

    def analysis_into(self, hops: np.ndarray, memory: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
        """hops [R, hop] float32 -> ``out`` [R, F] complex64 (``analysis_frame`` per row, written in
        place); ``memory`` [R, fft - hop] is each row's analysis memory and becomes ``hops``;
        ``scratch`` [>= R, fft] float32."""
        h, window = self.hop, self._scaled_window
        windowed = scratch[: len(hops)]
        np.multiply(memory, window[:h], out=windowed[:, :h])
        np.multiply(hops, window[h:], out=windowed[:, h:])
        _rfft_rows(windowed, out)
        memory[:] = hops

    def synthesis_into(self, spec: np.ndarray, memory: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
        """spec [R, F] complex64 -> ``out`` [R, hop] float32 (``synthesis_frame`` per row, written
        in place), overlap-added with ``memory`` [R, fft - hop], which becomes each frame's second
        half; ``scratch`` [>= R, fft] float32."""
        frames = scratch[: len(spec)]
        _irfft_rows(spec, frames)
        frames *= self.window
        np.add(frames[:, : self.hop], memory, out=out)
        memory[:] = frames[:, self.hop :]

    def _erb_db(self, spec: np.ndarray) -> np.ndarray:
        """[..., F] -> [..., E] float32: 10*log10(mean band power + 1e-10)."""
        power = spec.real * spec.real + spec.imag * spec.imag
        band_power = np.add.reduceat(power * self._bin_weight, self.band_starts, axis=-1)
        return band_power_db(band_power)

    def _ema_update(self, mean: np.ndarray, x: np.ndarray) -> None:
        """mean <- x*(1-alpha) + mean*alpha, in place, float32 like libDF."""
        mean *= self.norm_alpha
        mean += x * self._one_minus_alpha

    def _erb_feature(self, erb_db: np.ndarray, erb_mean: np.ndarray) -> np.ndarray:
        return (erb_db - erb_mean) / np.float32(ERB_FEATURE_SCALE_DB)

    def _unit_feature(self, spec_df: np.ndarray, mag_mean: np.ndarray) -> np.ndarray:
        return spec_df / np.sqrt(mag_mean)

    # -- one hop ---------------------------------------------------------------------------------

    def analysis_frame(self, hop_samples: np.ndarray, state: FrontEndState) -> np.ndarray:
        """[..., hop] float32 -> [..., F] complex64; shifts ``state.analysis_memory`` ([..., fft - hop]:
        leading axes are streams, as ``StreamPool`` stacks them)."""
        buf = np.concatenate((state.analysis_memory, np.asarray(hop_samples, dtype=np.float32)), axis=-1)
        state.analysis_memory[:] = buf[..., self.hop :]
        return self._windowed_rfft(buf)

    def features_frame(self, spec: np.ndarray, state: FrontEndState) -> tuple[np.ndarray, np.ndarray]:
        """[F] complex64 -> (feat_erb [E] float32, feat_spec [D] complex64); updates both norms."""
        erb_db = self._erb_db(spec)
        self._ema_update(state.erb_norm_state, erb_db)
        spec_df = spec[: self.nb_df]
        self._ema_update(state.unit_norm_state, np.abs(spec_df))
        return (
            self._erb_feature(erb_db, state.erb_norm_state),
            self._unit_feature(spec_df, state.unit_norm_state),
        )

    def synthesis_frame(self, spec: np.ndarray, state: FrontEndState) -> np.ndarray:
        """[..., F] complex -> [..., hop] float32; overlap-adds with ``state.synthesis_memory``."""
        frame = self._windowed_irfft(spec)
        out = frame[..., : self.hop] + state.synthesis_memory
        state.synthesis_memory[:] = frame[..., self.hop :]
        return out

    # -- T frames at once (same numbers, same final state) ---------------------------------------

    def analysis(self, audio: np.ndarray, state: FrontEndState) -> np.ndarray:
        """[N] float32 -> [T = N // hop, F] complex64. Only whole hops are consumed (as libDF):
        the last N % hop samples are ignored; a stream must keep them for its next call."""
        audio = np.asarray(audio, dtype=np.float32)
        nb_frames = len(audio) // self.hop
        if nb_frames == 0:
            return np.zeros((0, self.params.freq_bins), dtype=np.complex64)
        padded = np.concatenate((state.analysis_memory, audio[: nb_frames * self.hop]))
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.fft_size)[:: self.hop]
        state.analysis_memory[:] = padded[len(padded) - len(state.analysis_memory) :]
        return self._windowed_rfft(frames)

    def features(self, spec: np.ndarray, state: FrontEndState) -> tuple[np.ndarray, np.ndarray]:
        """[T, F] -> (feat_erb [T, E], feat_spec [T, D]). The exponential means run frame by
        frame; everything else is vectorised."""
        erb_db = self._erb_db(spec)
        spec_df = spec[:, : self.nb_df]
        magnitude = np.abs(spec_df)
        erb_mean = self._exponential_means(erb_db, state.erb_norm_state)
        mag_mean = self._exponential_means(magnitude, state.unit_norm_state)
        return self._erb_feature(erb_db, erb_mean), self._unit_feature(spec_df, mag_mean)

    def _exponential_means(self, x: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """[T, K] -> [T, K]: ``_ema_update`` applied frame by frame (``mean`` [K] is updated in
        place to the last), as one small matmul per block of frames instead of T numpy calls:
        within a block, mean_t = alpha^(t+1) * mean_before + sum_k (1-alpha) alpha^(t-k) x_k.
        Computed in float64, so it agrees with the float32 recursion to float32 rounding."""
        weights, decay = self._ema_block_weights
        out = np.empty(x.shape, dtype=np.float32)
        previous = mean.astype(np.float64)
        for start in range(0, len(x), EMA_BLOCK_FRAMES):
            block = x[start : start + EMA_BLOCK_FRAMES]
            n = len(block)
            means = weights[:n, :n] @ block + decay[:n, None] * previous
            out[start : start + n] = means
            previous = means[-1]
        if len(x):
            mean[:] = out[-1]
        return out

    @functools.cached_property
    def _ema_block_weights(self) -> tuple[np.ndarray, np.ndarray]:
        alpha = float(self.norm_alpha)
        lag = np.arange(EMA_BLOCK_FRAMES)[:, None] - np.arange(EMA_BLOCK_FRAMES)[None, :]
        weights = np.where(lag >= 0, (1.0 - alpha) * alpha ** np.maximum(lag, 0), 0.0)
        return weights, alpha ** np.arange(1, EMA_BLOCK_FRAMES + 1, dtype=np.float64)

    def synthesis(self, spec: np.ndarray, state: FrontEndState) -> np.ndarray:
        """[T, F] complex -> [T * hop] float32 (overlap-add of hop-shifted windowed frames)."""
        hop = self.hop
        nb_frames = len(spec)
        if nb_frames == 0:
            return np.zeros(0, dtype=np.float32)
        frames = self._windowed_irfft(spec)  # [T, 2*hop]
        out = np.zeros((nb_frames + 1) * hop, dtype=np.float32)
        out[: nb_frames * hop] += frames[:, :hop].reshape(-1)
        out[hop:] += frames[:, hop:].reshape(-1)
        out[:hop] += state.synthesis_memory
        state.synthesis_memory[:] = out[nb_frames * hop :]
        return out[: nb_frames * hop]


@functools.lru_cache(maxsize=8)
def front_end(params: DspParams, tables=None) -> FrontEnd:
    """Shared ``FrontEnd`` for ``params`` (and a manifest's ``tables``; cached: building one
    computes the window and bands)."""
    return FrontEnd(params, tables)


# ---------------------------------------------------------------------------------------------
# Whole-signal form


def _check_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise AudioInputError(f"expected mono audio of shape [N], got shape {audio.shape}; pass one channel")
    return audio.astype(np.float32, copy=False)


def _check_spec(spec: np.ndarray, params: DspParams) -> np.ndarray:
    spec = np.asarray(spec)
    if spec.ndim != 2 or spec.shape[1] != params.freq_bins:
        raise AudioInputError(
            f"expected a spectrogram of shape [T, {params.freq_bins}] for fft_size={params.fft_size}, "
            f"got {spec.shape}"
        )
    return spec.astype(np.complex64, copy=False)


def stft(audio: np.ndarray, params: DspParams) -> np.ndarray:
    """[N] -> [T = N // hop, F] complex64, as ``libdf.DF.analysis`` (memory starts at zero).

    Frame t covers samples (t-1)*hop .. (t+1)*hop (zeros before 0). A trailing partial hop
    (N % hop samples) is dropped, as libDF does; zero-pad first to keep it."""
    fe = front_end(params)
    return fe.analysis(_check_audio(audio), FrontEndState.initial(params))


def istft(spec: np.ndarray, params: DspParams) -> np.ndarray:
    """[T, F] -> [T * hop] float32, as ``libdf.DF.synthesis``. ``istft(stft(x))`` is x delayed
    by ``params.stft_delay_samples`` (fft - hop) samples."""
    fe = front_end(params)
    return fe.synthesis(_check_spec(spec, params), FrontEndState.initial(params))


def band_power_db(band_power: np.ndarray) -> np.ndarray:
    """float32 band power -> float32 10*log10(power + 1e-10), the log10 rounded correctly once.

    The log10 runs in float64: numpy's float32 log10 is SIMD code whose rounding changes with the
    numpy release and the CPU (numpy 2.4 on AVX-512: up to 2 ulp, half the values one off), while
    every port of this front-end (libDF, web/src/dsp.js) rounds correctly; features must not
    depend on which numpy a user has."""
    shifted = (np.asarray(band_power, dtype=np.float32) + np.float32(ERB_POWER_EPS)).astype(np.float64)
    return np.log10(shifted).astype(np.float32) * np.float32(10.0)


def erb_features(spec: np.ndarray, params: DspParams) -> np.ndarray:
    """[T, F] -> [T, E] float32: band dB minus their exponential mean, / 40 (libDF ``feat_erb``)."""
    state = FrontEndState.initial(params)
    return front_end(params).features(_check_spec(spec, params), state)[0]


def unit_norm_features(spec: np.ndarray, params: DspParams) -> np.ndarray:
    """[T, F] -> [T, D] complex64: bins 0..D-1 divided by sqrt of the exponential mean of |X|."""
    state = FrontEndState.initial(params)
    return front_end(params).features(_check_spec(spec, params), state)[1]


def apply_erb_mask(spec: np.ndarray, mask: np.ndarray, params: DspParams) -> np.ndarray:
    """spec [..., F] times mask [..., E] expanded to bins by the 0/1 inverse filterbank."""
    if np.shape(spec)[-1] != params.freq_bins or np.shape(mask)[-1] != params.nb_erb:
        raise AudioInputError(
            f"expected spec [..., {params.freq_bins}] and mask [..., {params.nb_erb}], "
            f"got {np.shape(spec)} and {np.shape(mask)}"
        )
    return spec * stages.erb_gains(mask, front_end(params).erb_widths)


def deep_filter(spec: np.ndarray, coefs: np.ndarray, df_lookahead_frames: int) -> np.ndarray:
    """``stages.deep_filter`` over a whole signal (zero frames beyond its ends).

    spec [T, F_all] complex, coefs [T, D, O] complex -> [T, D] complex64, with tap 0 the oldest:
    out[t, f] = sum_i coefs[t, f, i] * spec[t - (O - 1 - lookahead) + i, f] (zeros outside)."""
    spec = np.asarray(spec)
    coefs = np.asarray(coefs)
    nb_frames, nb_df, order = coefs.shape
    if spec.ndim != 2 or spec.shape[0] != nb_frames or spec.shape[1] < nb_df:
        raise AudioInputError(f"expected spec [{nb_frames}, >={nb_df}] for coefs {coefs.shape}, got {spec.shape}")
    if not 0 <= df_lookahead_frames < order:
        raise AudioInputError(f"df_lookahead_frames must be in 0..{order - 1}, got {df_lookahead_frames}")
    past = order - 1 - df_lookahead_frames
    window = np.pad(spec[:, :nb_df], ((past, df_lookahead_frames), (0, 0)))
    return stages.deep_filter(window, coefs)
