"""dfnet4_sdk.dsp against its oracle libdf (deepfilterlib 0.5.6) on real speech.

Every comparison prints its measured error (``pytest -s`` shows them).
"""

from __future__ import annotations

import time

import libdf  # PyPI deepfilterlib: the oracle of these tests ([dev] extra)
import numpy as np
import pytest
import soundfile
from audio_data import data_file

from dfnet4_sdk import dsp, stages
from dfnet4_sdk.errors import AudioInputError
from dfnet4_sdk.params import DspParams

MIN_SECONDS = 5.0

P48 = DspParams()  # DFN3: 48 kHz, fft 960, hop 480, 32 ERB bands, 96 DF bins, min 2 bins per band
P16 = DspParams(sample_rate_hz=16000, fft_size=320, hop_size_samples=160, nb_erb=24, nb_df=64)
CASES = {  # params, speech clips (concatenated up to >= MIN_SECONDS)
    "48k": (P48, ["speech/vctk_p286_011_48k.flac"]),
    "16k": (P16, ["speech/vbd_train_p287_003_clean_16k.flac"]),
}
DFN3_ERB_WIDTHS = [2] * 13 + [5, 5, 7, 7, 8, 10, 12, 13, 15, 18, 20, 24, 28, 31, 37, 42, 50, 56, 67]


def _load_speech(params: DspParams, clips: list[str]) -> np.ndarray:
    parts = []
    for clip in clips:
        path = data_file(clip)
        audio, sr = soundfile.read(str(path), dtype="float32", always_2d=False)
        assert sr == params.sample_rate_hz, (path, sr)
        parts.append(audio)
    audio = np.concatenate(parts)
    assert len(audio) >= MIN_SECONDS * params.sample_rate_hz, f"{clips}: {len(audio) / params.sample_rate_hz} s"
    return audio


def _libdf_state(params: DspParams):
    return libdf.DF(
        params.sample_rate_hz, params.fft_size, params.hop_size_samples, params.nb_erb, params.min_nb_erb_freqs
    )


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    """(name, params, audio, libdf.DF) for each sample rate."""
    params, clips = CASES[request.param]
    return request.param, params, _load_speech(params, clips), _libdf_state(params)


def _report(what: str, err: float, scale: float = 1.0) -> float:
    rel = err / scale
    print(f"\n  {what}: max abs err {err:.3e}, relative {rel:.3e}")
    return rel


# --- constants -----------------------------------------------------------------------------------


def test_dfn3_erb_widths_match_reference_and_libdf():
    assert dsp.erb_band_widths(P48).tolist() == DFN3_ERB_WIDTHS
    for params in (P48, P16, DspParams(min_nb_erb_freqs=1)):
        assert dsp.erb_band_widths(params).tolist() == _libdf_state(params).erb_widths().tolist(), params


def test_norm_alpha_at_defaults():
    assert P48.norm_alpha == 0.99
    assert P16.norm_alpha == 0.99  # exp(-160 / 16000) rounds the same way


@pytest.mark.parametrize("params", [P48, P16], ids=["48k", "16k"])
def test_window_and_initial_states_equal_libdf(params):
    assert np.array_equal(dsp.vorbis_window(params.fft_size), _libdf_state(params).fft_window())
    state = dsp.FrontEndState.initial(params)
    assert np.array_equal(state.unit_norm_state, libdf.unit_norm_init(params.nb_df)[0])
    assert np.allclose(state.erb_norm_state, np.linspace(-60, -90, params.nb_erb), atol=1e-5)
    assert state.analysis_memory.shape == state.synthesis_memory.shape == (params.stft_delay_samples,)
    assert all(a.dtype == np.float32 for a in vars(state).values())


@pytest.mark.parametrize("params", [P48, P16], ids=["48k", "16k"])
def test_filterbanks(params):
    widths = dsp.erb_band_widths(params)
    fb, inv = dsp.erb_filterbank(params), dsp.erb_inverse_filterbank(params)
    assert fb.shape == (params.freq_bins, params.nb_erb) and inv.shape == (params.nb_erb, params.freq_bins)
    assert fb.dtype == inv.dtype == np.float32
    assert np.allclose(fb.sum(axis=0), 1.0) and np.array_equal(inv.sum(axis=0), np.ones(params.freq_bins))
    assert np.array_equal(inv.sum(axis=1), widths)
    mask = np.random.default_rng(0).random((3, params.nb_erb), dtype=np.float32)
    assert np.array_equal(mask @ inv, libdf.erb_inv(mask, _libdf_state(params).erb_widths()))


# --- STFT ----------------------------------------------------------------------------------------


def test_stft_matches_libdf_analysis(case):
    name, params, audio, df = case
    ref = df.analysis(audio[None])[0]
    spec = dsp.stft(audio, params)
    assert spec.dtype == np.complex64
    assert spec.shape == ref.shape == (len(audio) // params.hop_size_samples, params.freq_bins)
    err = np.abs(spec - ref).max()
    rel = _report(f"[{name}] stft vs libdf.DF.analysis (rel. to max |X|)", err, np.abs(ref).max())
    assert rel <= 1e-5


def test_stft_drops_trailing_partial_hop_like_libdf(case):
    name, params, audio, df = case
    hop = params.hop_size_samples
    audio = audio[: 20 * hop + hop // 3]  # 20 whole hops + a partial one
    spec = dsp.stft(audio, params)
    assert spec.shape[0] == df.analysis(audio[None]).shape[1] == 20
    assert np.array_equal(spec, dsp.stft(audio[: 20 * hop], params))


def test_istft_matches_libdf_synthesis(case):
    name, params, audio, df = case
    spec = df.analysis(audio[None])[0]
    ref = df.synthesis(spec[None].copy())[0]
    out = dsp.istft(spec, params)
    assert out.dtype == np.float32 and out.shape == ref.shape == (len(spec) * params.hop_size_samples,)
    rms = float(np.sqrt(np.mean(ref.astype(np.float64) ** 2)))
    rel = _report(f"[{name}] istft vs libdf.DF.synthesis (rel. to RMS)", np.abs(out - ref).max(), rms)
    assert rel <= 1e-5


def test_perfect_reconstruction_with_fft_minus_hop_delay(case):
    name, params, audio, _ = case
    delay = params.stft_delay_samples
    out = dsp.istft(dsp.stft(audio, params), params)
    n = len(out) - delay
    err = np.abs(out[delay:] - audio[:n]).max()
    _report(f"[{name}] istft(stft(x)) vs x delayed by {delay} samples", err, np.abs(audio).max())
    assert err <= 1e-5
    assert np.abs(out[:delay]).max() <= 1e-5  # the first fft - hop samples are the zero-filled delay


# --- features ------------------------------------------------------------------------------------


def test_erb_features_match_libdf(case):
    name, params, audio, df = case
    spec = df.analysis(audio[None])[0]
    erb_db = libdf.erb(spec[None], df.erb_widths())  # [1, T, E]
    ref = libdf.erb_norm(erb_db.copy(), params.norm_alpha)[0]  # erb_norm also overwrites its input
    feat = dsp.erb_features(spec, params)
    assert feat.dtype == np.float32 and feat.shape == ref.shape == (len(spec), params.nb_erb)
    assert _report(f"[{name}] erb_features vs libdf.erb_norm(libdf.erb(X))", np.abs(feat - ref).max()) <= 1e-5
    # the band-mean matrix gives the same band power as libdf.erb(db=False)
    power = spec.real**2 + spec.imag**2
    ref_power = libdf.erb(spec[None], df.erb_widths(), db=False)[0]
    rel = np.abs(power @ dsp.erb_filterbank(params) - ref_power).max() / ref_power.max()
    assert _report(f"[{name}] |X|^2 @ erb_filterbank vs libdf.erb(db=False)", rel) <= 1e-5


def test_unit_norm_features_match_libdf(case):
    name, params, audio, df = case
    spec = df.analysis(audio[None])[0]
    ref = libdf.unit_norm(np.ascontiguousarray(spec[None, :, : params.nb_df]), params.norm_alpha)[0]
    feat = dsp.unit_norm_features(spec, params)
    assert feat.dtype == np.complex64 and feat.shape == ref.shape == (len(spec), params.nb_df)
    err = np.abs(feat - ref).max()
    rel = _report(f"[{name}] unit_norm_features vs libdf.unit_norm (rel. to max)", err, np.abs(ref).max())
    assert rel <= 1e-5


# --- frame form == whole-signal form ---------------------------------------------------------------


def test_frame_form_equals_whole_signal(case):
    name, params, audio, _ = case
    fe = dsp.FrontEnd(params)
    state = dsp.FrontEndState.initial(params)
    hops = audio[: len(audio) // params.hop_size_samples * params.hop_size_samples].reshape(-1, params.hop_size_samples)
    specs, erbs, cplx, outs = [], [], [], []
    for hop_samples in hops:
        spec = fe.analysis_frame(hop_samples, state)
        feat_erb, feat_spec = fe.features_frame(spec, state)
        outs.append(fe.synthesis_frame(spec, state))
        specs.append(spec), erbs.append(feat_erb), cplx.append(feat_spec)
    whole_spec = dsp.stft(audio, params)
    pairs = {
        "stft": (np.stack(specs), whole_spec),
        "erb_features": (np.stack(erbs), dsp.erb_features(whole_spec, params)),
        "unit_norm_features": (np.stack(cplx), dsp.unit_norm_features(whole_spec, params)),
        "istft": (np.concatenate(outs), dsp.istft(whole_spec, params)),
    }
    for what, (frame_form, whole) in pairs.items():
        assert frame_form.dtype == whole.dtype and frame_form.shape == whole.shape, what
        err = np.abs(frame_form - whole).max()
        print(f"\n  [{name}] frame form vs whole signal, {what}: max abs err {err:.3e}, "
              f"bit-equal {np.mean(frame_form == whole):.1%}")
        # The whole-signal exponential means are float64 block matmuls, the frame form is libDF's
        # float32 recursion: they differ by that recursion's rounding, at most ~1/(1-alpha) ulps.
        assert err <= (2e-5 if what.endswith("features") else 1e-6), what


def test_batch_methods_in_uneven_chunks_keep_state(case):
    """A stream that feeds FrontEnd.analysis/features/synthesis chunks of any size (keeping the
    leftover partial hop itself) gets the whole-signal result."""
    name, params, audio, _ = case
    fe, state, hop = dsp.FrontEnd(params), dsp.FrontEndState.initial(params), params.hop_size_samples
    pending = np.zeros(0, dtype=np.float32)
    specs, erbs, outs = [], [], []
    for chunk in np.array_split(audio, np.cumsum([777, 5 * hop, 1, 3000, hop - 1, 12345])):
        pending = np.concatenate((pending, chunk))
        spec = fe.analysis(pending, state)
        pending = pending[len(spec) * hop :]
        specs.append(spec), erbs.append(fe.features(spec, state)[0]), outs.append(fe.synthesis(spec, state))
    whole_spec = dsp.stft(audio, params)
    assert np.abs(np.concatenate(specs) - whole_spec).max() <= 1e-6
    assert np.abs(np.concatenate(erbs) - dsp.erb_features(whole_spec, params)).max() <= 2e-5  # float64 block means
    assert np.abs(np.concatenate(outs) - dsp.istft(whole_spec, params)).max() <= 1e-6


def test_frame_form_cost(case):
    name, params, audio, _ = case
    fe, state = dsp.FrontEnd(params), dsp.FrontEndState.initial(params)
    hops = audio[: 200 * params.hop_size_samples].reshape(200, -1)
    start = time.perf_counter()
    for hop_samples in hops:
        spec = fe.analysis_frame(hop_samples, state)
        fe.features_frame(spec, state)
        fe.synthesis_frame(spec, state)
    per_frame_us = (time.perf_counter() - start) / len(hops) * 1e6
    print(f"\n  [{name}] frame form analysis + features + synthesis: {per_frame_us:.1f} us per hop")
    assert per_frame_us < 1000  # loose guard against accidental per-bin Python loops


# --- mask, deep filter, post-filter ----------------------------------------------------------------


def test_apply_erb_mask_matches_libdf_erb_inv(case):
    name, params, audio, df = case
    spec = df.analysis(audio[None])[0]
    mask = np.random.default_rng(1).random((len(spec), params.nb_erb), dtype=np.float32)
    out = dsp.apply_erb_mask(spec, mask, params)
    assert out.dtype == np.complex64
    assert np.array_equal(out, spec * libdf.erb_inv(mask, df.erb_widths()))
    fe = dsp.FrontEnd(params)
    assert np.array_equal(spec[5:6] * stages.erb_gains(mask[5:6], fe.erb_widths), out[5:6])  # one frame
    with pytest.raises(AudioInputError):
        dsp.apply_erb_mask(spec, mask[:, :-1], params)


def _random_complex(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _naive_deep_filter(spec, coefs, lookahead):
    nb_frames, nb_df, order = coefs.shape
    out = np.zeros((nb_frames, nb_df), dtype=np.complex128)
    for t in range(nb_frames):
        for f in range(nb_df):
            for i in range(order):
                src = t - (order - 1 - lookahead) + i
                if 0 <= src < nb_frames:
                    out[t, f] += coefs[t, f, i] * spec[src, f]
    return out


@pytest.mark.parametrize("order,lookahead", [(5, 2), (5, 0), (3, 2), (1, 0)])
def test_deep_filter_matches_naive_loop(order, lookahead):
    rng = np.random.default_rng(order * 10 + lookahead)
    nb_frames, freq_bins, nb_df = 40, 481, 96
    spec = _random_complex(rng, (nb_frames, freq_bins))
    coefs = _random_complex(rng, (nb_frames, nb_df, order))
    ref = _naive_deep_filter(spec.astype(np.complex128), coefs.astype(np.complex128), lookahead)
    out = dsp.deep_filter(spec, coefs, lookahead)
    assert out.dtype == np.complex64 and out.shape == (nb_frames, nb_df)
    err = np.abs(out - ref).max()
    assert _report(f"deep_filter order {order} lookahead {lookahead} vs naive loop", err, np.abs(ref).max()) <= 1e-6
    # the stream's form: one frame (T = 1), a window of `order` frames, oldest first, zero-padded at the edges
    past = order - 1 - lookahead
    padded = np.pad(spec, ((past, lookahead), (0, 0)))
    for t in (0, 1, nb_frames // 2, nb_frames - 1):
        frame = stages.deep_filter(padded[t : t + order], coefs[t : t + 1])
        assert frame.shape == (1, nb_df) and np.abs(frame[0] - out[t]).max() <= 1e-5
    with pytest.raises(AudioInputError):
        dsp.deep_filter(spec, coefs, order)


def test_post_filter_matches_reference_formula():
    rng = np.random.default_rng(2)
    noisy = _random_complex(rng, (50, 481))
    gains = rng.random((50, 481)) * 1.2  # > 1 is clamped to 1
    gains[0, :10] = 0.0  # zero output: gain clamped to 1e-12
    enhanced = (noisy * gains).astype(np.complex64)
    out = stages.post_filter(noisy, enhanced, beta=0.02)
    # REFERENCE.md: pf = (1 + beta) / (1 + beta / sin^2(pi g / 2)), g = clamp(|Y| / |X|, 1e-12, 1)
    g = np.clip(np.abs(enhanced.astype(np.complex128)) / (np.abs(noisy.astype(np.complex128)) + 1e-12), 1e-12, 1)
    ref = enhanced * (1.02 / (1 + 0.02 / np.sin(np.pi * g / 2) ** 2))
    # libDF filters in chunks of 4 bins: the last 481 % 4 = 1 (Nyquist) bin is left as it is.
    assert np.array_equal(out[:, 480:], enhanced[:, 480:])
    ref[:, 480:] = enhanced[:, 480:]
    assert out.dtype == np.complex64 and np.all(np.isfinite(out))
    rel = _report("post_filter vs REFERENCE formula (float64)", np.abs(out - ref).max(), np.abs(ref).max())
    assert rel <= 1e-5
    unity = np.abs(gains - 1.0) < 1e-3
    assert np.allclose(out[unity], enhanced[unity], rtol=1e-4)  # g = 1: pf = 1
    assert np.all(np.abs(out) <= np.abs(enhanced) * 1.0001)  # pf <= 1: only attenuates


def test_bad_input_shapes_raise_typed_errors():
    with pytest.raises(AudioInputError, match="mono"):
        dsp.stft(np.zeros((2, 4800), dtype=np.float32), P48)
    with pytest.raises(AudioInputError, match="481"):
        dsp.istft(np.zeros((3, 480), dtype=np.complex64), P48)


def test_state_copy_is_independent():
    state = dsp.FrontEndState.initial(P48)
    snapshot = state.copy()
    dsp.FrontEnd(P48).analysis_frame(np.ones(P48.hop_size_samples, dtype=np.float32), state)
    assert np.all(snapshot.analysis_memory == 0) and np.all(state.analysis_memory == 1)


@pytest.mark.parametrize("numpy_ffts", [False, True])
def test_many_stream_hops_equal_each_streams_own_hop(case, monkeypatch, numpy_ffts):
    """FrontEnd.analysis_into / synthesis_into (StreamPool's bound hop) give each row exactly the
    numbers of that stream's analysis_frame / synthesis_frame, over 20 hops of 5 streams of real
    speech; also with np.fft where numpy has no pocketfft gufuncs (numpy < 2)."""
    _, params, audio, _ = case
    if numpy_ffts:
        monkeypatch.setattr(dsp, "_rfft_even", None)
        monkeypatch.setattr(dsp, "_irfft", None)
    fe, hop, streams = dsp.FrontEnd(params), params.hop_size_samples, 5
    states = [dsp.FrontEndState.initial(params) for _ in range(streams)]
    a_mem = np.zeros((streams, params.fft_size - hop), np.float32)
    s_mem = np.zeros_like(a_mem)
    spec = np.zeros((streams, params.freq_bins), np.complex64)
    out = np.zeros((streams, hop), np.float32)
    scratch = np.zeros((8, params.fft_size), np.float32)
    for t in range(20):
        hops = np.stack([audio[(t + 7 * i) * hop : (t + 7 * i + 1) * hop] for i in range(streams)])
        fe.analysis_into(hops, a_mem, spec, scratch)
        expected = np.stack([fe.analysis_frame(hops[i], states[i]) for i in range(streams)])
        np.testing.assert_array_equal(spec, expected)
        fe.synthesis_into(spec * 0.5, s_mem, out, scratch)
        np.testing.assert_array_equal(out, np.stack([fe.synthesis_frame(spec[i] * 0.5, states[i]) for i in range(streams)]))
    assert float(np.abs(out).max()) > 1e-3  # real speech went through, not silence


def test_band_db_is_correctly_rounded_whatever_numpy_simd():
    """numpy 2.4's float32 log10 (AVX-512) is up to 2 ulp off, which put Python's features 7.7e-7
    from the browser port's (CI failed on it); the band dB must be libm's double log10 rounded once."""
    import math

    power = (10.0 ** np.random.default_rng(0).uniform(-11, 9, 20000)).astype(np.float32)
    got = dsp.band_power_db(power)
    want = np.array([math.log10(float(p + np.float32(dsp.ERB_POWER_EPS))) for p in power], dtype=np.float32)
    want *= np.float32(10.0)
    assert got.dtype == np.float32
    mismatches = int(np.count_nonzero(got != want))
    assert mismatches == 0, f"{mismatches} of {len(power)} band dB differ from a correctly rounded log10"
