"""The streaming runtime over the PyTorch backend with the imported DFN3 weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfnet4_sdk import Runtime, dsp
from dfnet4_sdk.errors import AudioInputError, ConfigError
from dfnet4_sdk.metrics import estimate_delay, snr_db
from dfnet4_sdk.stages import gating
from dfnet4_sdk.stream import StreamOptions


@pytest.fixture(scope="module")
def rt(dfn3):
    return Runtime(dfn3, backend="torch")


def whole_signal_reference(model, audio: np.ndarray) -> np.ndarray:
    """Enhance with the model's sequence (training) form and whole-signal DSP, no streaming."""
    d = model.dsp
    hop = d.hop_size_samples
    n = len(audio)
    pad = (-n) % hop + model.latency_samples + hop
    x = np.concatenate([audio, np.zeros(pad, np.float32)])
    spec = dsp.stft(x, d)
    feat_erb = torch.from_numpy(dsp.erb_features(spec, d))[None, None]
    feat_c = dsp.unit_norm_features(spec, d)
    feat_spec = torch.from_numpy(np.stack([feat_c.real, feat_c.imag]))[None].float()
    spec_t = torch.from_numpy(np.stack([spec.real, spec.imag], -1))[None, None].float()
    with torch.no_grad():
        enhanced, *_ = model(spec_t, feat_erb, feat_spec)
    e = enhanced[0, 0].numpy()
    y = dsp.istft(e[..., 0] + 1j * e[..., 1], d)
    return y[d.stft_delay_samples : d.stft_delay_samples + n]


def test_runtime_reports_model_facts(rt):
    assert rt.sample_rate == 48000
    assert rt.hop_size_samples == 480
    assert rt.latency_samples == 1440  # 480 STFT overlap + 2 look-ahead frames
    assert rt.model_family == "dfn3"


def test_stream_equals_whole_signal_model(dfn3, speech_mix_48k):
    """Frame-by-frame streaming (states fed back, look-ahead buffers, delay compensation)
    reproduces the sequence model applied to the whole signal."""
    _, noisy = speech_mix_48k
    rt = Runtime(dfn3, skip_silent_hops=False)
    streamed = np.concatenate([rt.process(noisy), rt.flush()])
    reference = whole_signal_reference(dfn3, noisy)
    snr = snr_db(reference, streamed)
    print(f"\nstreaming vs whole-signal DFN3: {snr:.1f} dB, max abs {np.abs(reference - streamed).max():.2e}")
    assert streamed.shape == noisy.shape
    assert snr >= 60.0


def test_enhancement_improves_snr_and_stays_aligned(rt, speech_mix_48k):
    clean, noisy = speech_mix_48k
    enhanced = rt.enhance(noisy, 48000)
    lag = estimate_delay(clean, enhanced, max_lag_samples=4800)
    before, after = snr_db(clean, noisy), snr_db(clean, enhanced)
    print(f"\nSNR noisy {before:.1f} dB -> enhanced {after:.1f} dB, lag {lag} samples")
    assert lag == 0
    assert after > before + 5.0


@pytest.mark.parametrize("chunk", [1, 7, 480, 4801])
def test_any_chunk_size_gives_the_same_output(rt, speech_mix_48k, chunk):
    _, noisy = speech_mix_48k
    x = noisy[: 48000 // 4] if chunk == 1 else noisy[:48000]
    whole = np.concatenate([rt.process(x), rt.flush()])
    parts = [rt.process(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    chunked = np.concatenate(parts + [rt.flush()])
    assert chunked.shape == x.shape
    np.testing.assert_array_equal(chunked, whole)


@pytest.mark.parametrize("n_samples", [1, 100, 480, 1439, 1441, 48000 + 17])
def test_output_length_equals_input_length(rt, speech_mix_48k, n_samples):
    x = speech_mix_48k[1][:n_samples]
    out = np.concatenate([rt.process(x), rt.process(np.zeros(0, np.float32)), rt.flush()])
    assert out.shape == (n_samples,)


@pytest.mark.parametrize("sample_rate", [8000, 16000, 44100])
def test_enhance_any_sample_rate_returns_same_length_and_rate(rt, sample_rate):
    from audio_data import load_clip

    x = load_clip("noisy_real/gtcrn_mix_16k.flac", sample_rate=sample_rate, seconds=3.0)
    y = rt.enhance(x, sample_rate)
    assert y.shape == x.shape and y.dtype == np.float32
    lag = estimate_delay(x, y, max_lag_samples=sample_rate // 10)
    assert lag == 0
    assert np.sum(y**2) < np.sum(x**2)  # noise removed, nothing added


def test_multichannel_channels_are_enhanced_independently(rt, speech_mix_48k):
    _, noisy = speech_mix_48k
    x = noisy[:96000]
    stereo = np.stack([x, 0.5 * x], axis=1)
    out = rt.enhance(stereo, 48000)
    assert out.shape == stereo.shape
    np.testing.assert_array_equal(out[:, 0], rt.enhance(x, 48000))
    np.testing.assert_array_equal(out[:, 1], rt.enhance(0.5 * x, 48000))


def test_integer_and_float64_inputs_are_converted(rt, speech_mix_48k):
    x = speech_mix_48k[1][:24000]
    pcm = np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)
    from_int = rt.enhance(pcm, 48000)
    from_float = rt.enhance(pcm.astype(np.float64) / 32768.0, 48000)
    np.testing.assert_allclose(from_int, from_float, atol=1e-6)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([0.1, np.nan, 0.2], np.float32), "NaN"),
        (np.array([0.1, np.inf], np.float32), "NaN/Inf"),
        (np.zeros((4, 2, 2), np.float32), "shape"),
        (np.zeros(10, np.complex64), "dtype"),
    ],
)
def test_bad_chunks_raise_typed_errors(rt, bad, message):
    with pytest.raises(AudioInputError, match=message):
        rt.process(bad)
    rt.reset()


def test_enhance_rejects_empty_audio_and_bad_rate(rt):
    with pytest.raises(AudioInputError, match="empty"):
        rt.enhance(np.zeros(0, np.float32), 48000)
    with pytest.raises(AudioInputError, match="sample_rate"):
        rt.enhance(np.zeros(10, np.float32), 0)


def test_changing_channel_layout_mid_stream_raises(rt):
    rt.process(np.zeros(100, np.float32))
    with pytest.raises(AudioInputError, match="reset"):
        rt.process(np.zeros((100, 2), np.float32))
    rt.reset()
    assert rt.process(np.zeros((100, 2), np.float32)).shape == (0, 2)
    rt.reset()


def test_reset_restarts_the_stream(rt, speech_mix_48k):
    x = speech_mix_48k[1][:24000]
    first = rt.process(x)
    rt.reset()
    np.testing.assert_array_equal(rt.process(x), first)
    rt.reset()


def test_digital_silence_gives_silence(rt):
    out = rt.enhance(np.zeros(48000, np.float32), 48000)
    assert np.all(out == 0)


def test_attenuation_limit_mixes_noisy_back(dfn3, speech_mix_48k):
    """With a limit g = 10^(-lim/20) the output is (1-g) * enhanced + g * noisy, per libDF."""
    _, noisy = speech_mix_48k
    x = noisy[:96000]
    full = Runtime(dfn3).enhance(x, 48000)
    limited = Runtime(dfn3, atten_lim_db=12.0).enhance(x, 48000)
    g = 10 ** (-12.0 / 20)
    expected = (1 - g) * full + g * x
    assert snr_db(expected, limited) > 60.0
    assert np.sum((limited - x) ** 2) < np.sum((full - x) ** 2)


def test_post_filter_attenuates_more(dfn3, speech_mix_48k):
    _, noisy = speech_mix_48k
    x = noisy[:96000]
    plain = Runtime(dfn3).enhance(x, 48000)
    filtered = Runtime(dfn3, post_filter_beta=0.02).enhance(x, 48000)
    assert np.sum(filtered**2) < np.sum(plain**2)
    assert snr_db(plain, filtered) > 5.0  # a gentle change, not a different signal


def test_stage_selection_matches_libdf():
    o = StreamOptions(min_db_thresh=-10, max_db_erb_thresh=30, max_db_df_thresh=20)
    assert gating(-12, o.gating_thresholds_db) == (False, True, False)  # noise only: zero mask
    assert gating(31, o.gating_thresholds_db) == (False, False, False)  # clean: untouched
    assert gating(25, o.gating_thresholds_db) == (True, False, False)  # ERB mask only
    assert gating(5, o.gating_thresholds_db) == (True, False, True)  # both stages


def test_invalid_options_raise_config_error():
    with pytest.raises(ConfigError, match="post_filter_beta"):
        StreamOptions(post_filter_beta=-1)
    with pytest.raises(ConfigError, match="atten_lim_db"):
        StreamOptions(atten_lim_db=0.0)


@pytest.mark.parametrize(
    "options",
    [{}, {"min_db_thresh": -10.0, "max_db_erb_thresh": 30.0, "max_db_df_thresh": 20.0},
     {"post_filter_beta": 0.02, "atten_lim_db": 12.0}],
    ids=["defaults", "gating", "post-filter+atten-lim"],
)
def test_fused_frame_graph_equals_the_three_graphs(dfn3, noisy_real_48k, options):
    """One graph call per hop (features, components, gating, mask, DF fused) computes what the
    three component graphs plus numpy DSP compute, gating included."""
    from dfnet4_sdk.runtimes.torch_backend import TorchBackend
    from dfnet4_sdk.stream import EnhancementStream

    backend = TorchBackend(dfn3)
    x = noisy_real_48k[: 3 * 48000]
    outs = []
    for fused in (False, True):
        s = EnhancementStream(backend, StreamOptions(**options), fused=fused)
        outs.append(np.concatenate([s.process(x), s.flush()]))
    snr = snr_db(outs[0], outs[1])
    print(f"\nfused vs split ({options}): {snr:.1f} dB")
    assert snr >= 90.0


def test_streaming_at_another_input_rate_keeps_length_and_alignment(dfn3):
    from audio_data import load_clip

    x = load_clip("noisy_real/gtcrn_mix_16k.flac", sample_rate=16000, seconds=3.0)
    rt = Runtime(dfn3, input_sample_rate=16000)
    out = np.concatenate([rt.process(x[i : i + 160]) for i in range(0, len(x), 160)] + [rt.flush()])
    assert out.shape == x.shape
    assert estimate_delay(x, out, 1600) == 0
    whole = Runtime(dfn3).enhance(x, 16000)
    assert snr_db(whole, out) > 30.0  # same enhancement; only the resampler edges differ


def test_clones_stream_independently_in_threads(dfn3, speech_mix_48k):
    """One loaded model, one stream per thread, no shared state."""
    from concurrent.futures import ThreadPoolExecutor

    _, noisy = speech_mix_48k
    a, b = noisy[:48000], noisy[48000:96000]
    rt = Runtime(dfn3)
    expected = [rt.enhance(a, 48000), rt.enhance(b, 48000)]
    clones = [rt.clone(), rt.clone()]
    assert clones[0].backend is rt.backend

    def run(i):
        x = (a, b)[i]
        return np.concatenate([clones[i].process(x[j : j + 480 * 7]) for j in range(0, len(x), 480 * 7)] + [clones[i].flush()])

    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(run, [0, 1]))
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=1e-6)


def test_clipped_and_huge_chunks(dfn3):
    rt = Runtime(dfn3)
    loud = np.clip(np.random.default_rng(1).standard_normal(48000 * 2).astype(np.float32) * 3, -1.5, 1.5)
    out = np.concatenate([rt.process(loud), rt.flush()])
    assert out.shape == loud.shape and np.isfinite(out).all()


def test_unsupported_sample_rate_is_refused(dfn3):
    with pytest.raises(AudioInputError, match="sample_rate"):
        Runtime(dfn3, input_sample_rate=100)
    with pytest.raises(AudioInputError, match="sample_rate"):
        Runtime(dfn3).enhance(np.zeros(100, np.float32), 1_000_000)


@pytest.mark.parametrize(
    "options",
    [{}, {"post_filter_beta": 0.02, "atten_lim_db": 12.0}, {"skip_silent_hops": False}],
    ids=["defaults", "post-filter+atten-lim", "no-silence-skip"],
)
def test_offline_path_equals_streaming(dfn3, noisy_real_48k, options):
    """enhance() runs block graphs with vectorised DSP; it must give the streaming result,
    including libDF's silent-hop skip (the DNS5 clip starts with two silent hops)."""
    from dfnet4_sdk.offline import enhance_offline

    rt = Runtime(dfn3, backend="torch", **options)
    x = noisy_real_48k[: 3 * 48000 + 123]
    streamed = np.concatenate([rt.process(x), rt.flush()])
    offline = enhance_offline(rt.backend, x, rt.options)
    snr = snr_db(streamed, offline)
    print(f"\noffline vs streaming ({options}): {snr:.1f} dB")
    assert offline.shape == x.shape and snr >= 90.0
    np.testing.assert_allclose(rt.enhance(x, 48000), offline, atol=1e-7)
    # Two threads (the last decoder and the synthesis a block behind the encoder): same numbers.
    np.testing.assert_array_equal(enhance_offline(rt.backend, x, rt.options, threads=2), offline)


def test_offline_threads_must_be_positive(dfn3):
    with pytest.raises(ConfigError, match="offline_threads"):
        Runtime(dfn3, backend="torch", offline_threads=0)


def test_offline_path_defers_to_streaming_when_gating_acts(dfn3, noisy_real_48k):
    from dfnet4_sdk.offline import enhance_offline

    rt = Runtime(dfn3, backend="torch", min_db_thresh=-10.0, max_db_erb_thresh=30.0, max_db_df_thresh=20.0)
    x = noisy_real_48k[: 2 * 48000]
    assert enhance_offline(rt.backend, x, rt.options) is None  # some frames are gated on this clip
    streamed = np.concatenate([rt.process(x), rt.flush()])
    np.testing.assert_array_equal(rt.enhance(x, 48000), streamed)


class _RunOnly:
    """A backend without ``bind``: the stream falls back to one ``run`` per hop."""

    def __init__(self, backend):
        self.name, self.manifest, self.run = backend.name, backend.manifest, backend.run


@pytest.mark.parametrize(
    "options", [StreamOptions(), StreamOptions(min_db_thresh=-10.0, max_db_erb_thresh=30.0, max_db_df_thresh=20.0)],
    ids=["defaults", "gating-acts"],
)
def test_bound_frame_graph_equals_per_call_run(noisy_real_48k, options):
    """The ONNX backend's bound, ping-ponged buffers give exactly what per-call ``run`` gives,
    also across ``reset`` (which binds new state buffers)."""
    from dfnet4_sdk.stream import EnhancementStream

    backend = Runtime().backend  # the shipped ONNX bundle
    assert hasattr(backend, "bind")
    bound, unbound = EnhancementStream(backend, options), EnhancementStream(_RunOnly(backend), options)
    x = noisy_real_48k[: 2 * 48000]
    for _ in range(2):
        a = np.concatenate([bound.process(x[:30_001]), bound.process(x[30_001:]), bound.flush()])
        b = np.concatenate([unbound.process(x), unbound.flush()])
        np.testing.assert_array_equal(a, b)


def test_bind_reports_every_bad_buffer():
    backend = Runtime().backend
    g = backend.manifest.frame_graph
    inputs = {t.name: np.zeros(t.shape, np.float32) for t in g.inputs}
    outputs = {t.name: np.zeros(t.shape, np.float32) for t in g.outputs}
    inputs["spec"] = inputs["spec"].astype(np.float64)
    del outputs["lsnr"]
    with pytest.raises(ConfigError) as err:
        backend.bind("frame", inputs, outputs)
    assert "spec: expected C-contiguous float32" in str(err.value) and "lsnr: expected" in str(err.value)
