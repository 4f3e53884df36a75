"""The per-hop stages tied together: each numpy function (``dfnet4_sdk.stages``, what the stream
and the offline path call) against its torch twin (``models/spectral``, what the fused frame
graph and the training form call), frame by frame on the same random inputs, and the numpy
functions one frame at a time (the stream, T = 1) against a block of frames (offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfnet4_sdk import dsp, stages
from dfnet4_sdk.models import spectral
from dfnet4_sdk.params import DspParams

P48 = DspParams()  # DFN3: 481 bins, 32 ERB bands, 96 DF bins
FE = dsp.front_end(P48)
ERB_INV = spectral.erb_inverse_tensor(P48)
TOL = 1e-5  # float32, relative to the largest magnitude compared
# [min_db_thresh, max_db_erb_thresh, max_db_df_thresh]: libDF's defaults, gates that act on
# [-20, 40] dB, and inverted ones (min above the others; max_df above max_erb).
THRESHOLDS = {
    "defaults": [-15.0, 35.0, 35.0],
    "acting": [-10.0, 30.0, 20.0],
    "crossed": [10.0, -5.0, 25.0],
    "off": [-1e9, 1e9, 1e9],
}


def _complex(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _pair(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(x.real)), torch.from_numpy(np.ascontiguousarray(x.imag))


def _joined(re: torch.Tensor, im: torch.Tensor) -> np.ndarray:
    return re.numpy() + 1j * im.numpy()


def _assert_close(torch_out: np.ndarray, numpy_out: np.ndarray, what: str) -> None:
    assert torch_out.shape == numpy_out.shape, what
    scale = max(float(np.abs(numpy_out).max()), 1e-30)
    err = float(np.abs(torch_out - numpy_out).max()) / scale
    assert err <= TOL, f"{what}: torch vs numpy relative error {err:.2e}"


def _lsnr(rng, n):
    """Local SNRs across every gate, exactly on each threshold, and NaN (libDF runs all stages)."""
    values = rng.uniform(-25.0, 45.0, n).astype(np.float32)
    edges = np.float32([-15.0, 35.0, -10.0, 30.0, 20.0, 10.0, -5.0, 25.0, np.nan])
    values[: len(edges)] = edges[:n]
    return values


# -- gating -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", THRESHOLDS)
def test_gating_numpy_equals_torch_and_libdf(name):
    thresholds = np.asarray(THRESHOLDS[name], np.float32)
    lsnr = _lsnr(np.random.default_rng(0), 400)
    gates = stages.gating(lsnr, thresholds)
    twin = spectral.gating(torch.from_numpy(lsnr), torch.from_numpy(thresholds))
    for a, b, field in zip(gates, twin, stages.Gates._fields):
        assert np.array_equal(a, b.numpy()), f"{name}: {field} differs on {lsnr[a != b.numpy()]}"
    low, max_erb, max_df = thresholds
    for value, erb, zeros, df in zip(lsnr, *gates):  # libDF tract.rs, written out
        expected = ((False, True, False) if value < low else (False, False, False) if value > max_erb
                    else (True, False, False) if value > max_df else (True, False, True))
        assert (erb, zeros, df) == expected, (name, value)
    assert gates.apply_erb_mask.any() and (name == "off" or not gates.apply_df.all())


# -- mask and deep filter --------------------------------------------------------------------


@pytest.mark.parametrize("gated", [False, True])
def test_erb_gains_numpy_equals_torch(gated):
    rng = np.random.default_rng(1)
    mask = rng.random((2, 30, P48.nb_erb), dtype=np.float32)  # [B, T, E]
    lsnr = _lsnr(rng, 60).reshape(2, 30)
    gates = stages.gating(lsnr, THRESHOLDS["acting"]) if gated else None
    twin = spectral.gating(torch.from_numpy(lsnr), torch.tensor(THRESHOLDS["acting"])) if gated else None
    gains = stages.erb_gains(mask, FE.erb_widths, gates)
    assert gains.shape == (2, 30, P48.freq_bins)
    assert np.array_equal(spectral.erb_gains(torch.from_numpy(mask), ERB_INV, twin).numpy(), gains)
    if gated:  # a frame without the ERB stage: all zeros (noise only) or all ones (clean)
        off = ~gates.apply_erb_mask
        assert np.array_equal(gains[off], np.broadcast_to((~gates.apply_zero_mask[off])[:, None], gains[off].shape))


@pytest.mark.parametrize("order,lookahead", [(5, 2), (5, 0), (3, 1), (1, 0)])
def test_deep_filter_numpy_equals_torch(order, lookahead):
    rng = np.random.default_rng(order * 10 + lookahead)
    t = 17
    window = _complex(rng, (2, t + order - 1, P48.freq_bins))  # [B, T + O - 1, F]
    coefs = rng.standard_normal((2, t, P48.nb_df, 2 * order)).astype(np.float32)  # graph layout
    out = stages.deep_filter(window, stages.df_taps(coefs, order))
    assert out.shape == (2, t, P48.nb_df) and out.dtype == np.complex64
    re, im = spectral.deep_filter(*_pair(window), *spectral.df_coefs_planar(torch.from_numpy(coefs), order))
    _assert_close(_joined(re, im), out, f"deep filter O={order}")
    # tap o of step t reads window frame t + o: check one entry by hand
    taps = coefs[1, 4, 7].reshape(order, 2)
    assert np.isclose(out[1, 4, 7], sum(complex(*taps[o]) * window[1, 4 + o, 7] for o in range(order)), rtol=1e-5)


def _stage_inputs(rng, t, order=5, lookahead=2, thresholds="acting"):
    window = _complex(rng, (t + order - 1, P48.freq_bins))
    mask = rng.random((t, P48.nb_erb), dtype=np.float32)
    coefs = rng.standard_normal((t, P48.nb_df, 2 * order)).astype(np.float32) * 0.3
    lsnr = _lsnr(rng, t)
    return window, mask, coefs, lsnr, np.asarray(THRESHOLDS[thresholds], np.float32), order - 1 - lookahead


@pytest.mark.parametrize("thresholds", ["acting", "crossed", "off", None])
def test_mask_and_filter_numpy_equals_torch(thresholds):
    window, mask, coefs, lsnr, th, past = _stage_inputs(np.random.default_rng(3), 40, thresholds=thresholds or "off")
    gates = stages.gating(lsnr, th) if thresholds else None
    twin = spectral.gating(torch.from_numpy(lsnr), torch.from_numpy(th)) if thresholds else None
    out = stages.mask_and_filter(window, mask, stages.df_taps(coefs, 5), FE.erb_widths, past, gates)
    re, im = spectral.mask_and_filter(*_pair(window), torch.from_numpy(mask), torch.from_numpy(coefs), ERB_INV, 5, past, twin)
    _assert_close(_joined(re, im), out, f"mask and filter ({thresholds})")
    noisy = window[past : past + 40]
    if gates is not None:  # the gated frames are exactly what libDF makes of them
        clean = ~gates.apply_erb_mask & ~gates.apply_zero_mask
        assert np.array_equal(out[clean], noisy[clean]) and not np.any(out[gates.apply_zero_mask])
        assert np.array_equal(out[gates.apply_erb_mask & ~gates.apply_df, P48.nb_df :],
                              (noisy * stages.erb_gains(mask, FE.erb_widths))[gates.apply_erb_mask & ~gates.apply_df, P48.nb_df :])


@pytest.mark.parametrize("order,lookahead", [(5, 2), (3, 0)])
def test_training_form_mask_and_filter_equal_numpy_over_a_sequence(order, lookahead):
    """``spectral.enhance_sequence`` (the training form's layout, zero frames beyond the ends)
    gives what the numpy stages give on the zero-padded window."""
    rng = np.random.default_rng(9)
    t = 23
    spec = _complex(rng, (2, t, P48.freq_bins))
    mask = rng.random((2, t, P48.nb_erb), dtype=np.float32)
    coefs = rng.standard_normal((2, t, P48.nb_df, 2 * order)).astype(np.float32)
    past = order - 1 - lookahead
    window = np.pad(spec, ((0, 0), (past, lookahead), (0, 0)))
    expected = stages.mask_and_filter(window, mask, stages.df_taps(coefs, order), FE.erb_widths, past)
    spec_t = torch.from_numpy(np.stack([spec.real, spec.imag], axis=-1))[:, None]  # [B, 1, T, F, 2]
    out = spectral.enhance_sequence(spec_t, torch.from_numpy(mask)[:, None], torch.from_numpy(coefs), P48, order, lookahead)
    assert out.shape == (2, 1, t, P48.freq_bins, 2)
    _assert_close(out[:, 0, ..., 0].numpy() + 1j * out[:, 0, ..., 1].numpy(), expected, "training form")


# -- post-filter, attenuation limit -----------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.02, 0.5])
def test_post_filter_numpy_equals_torch(beta):
    rng = np.random.default_rng(4)
    noisy = _complex(rng, (30, P48.freq_bins))
    enhanced = (noisy * rng.random((30, P48.freq_bins)) * 1.2).astype(np.complex64)  # gains > 1 clamp to 1
    enhanced[0, :10] = 0  # gain clamped to 1e-12
    out = stages.post_filter(noisy, enhanced, beta)
    _assert_close(_joined(*spectral.post_filter(*_pair(noisy), *_pair(enhanced), beta)), out, f"post-filter beta {beta}")
    assert np.array_equal(out[:, 480], enhanced[:, 480])  # libDF skips the last 481 % 4 bins
    if beta == 0:
        assert np.allclose(out, enhanced, rtol=1e-6, atol=0)  # pf = 1
    else:
        assert np.all(np.abs(out) <= np.abs(enhanced) * 1.0001) and np.abs(out).sum() < 0.99 * np.abs(enhanced).sum()


@pytest.mark.parametrize("beta,atten_lim_db", [(0.0, 100.0), (0.02, 100.0), (0.0, 12.0), (0.02, 6.0)])
@pytest.mark.parametrize("gated", [False, True])
def test_finish_numpy_equals_torch(beta, atten_lim_db, gated):
    from dfnet4_sdk.stream import StreamOptions

    lim = StreamOptions(atten_lim_db=atten_lim_db).atten_lim_gain
    assert (lim is None) == (atten_lim_db >= 100)
    rng = np.random.default_rng(5)
    noisy = _complex(rng, (25, P48.freq_bins))
    enhanced = (noisy * rng.random((25, P48.freq_bins))).astype(np.complex64)
    lsnr = _lsnr(rng, 25)
    gates = stages.gating(lsnr, THRESHOLDS["acting"]) if gated else None
    twin = spectral.gating(torch.from_numpy(lsnr), torch.tensor(THRESHOLDS["acting"])) if gated else None
    out = stages.finish(noisy, enhanced, beta, lim, gates)
    _assert_close(_joined(*spectral.finish(*_pair(noisy), *_pair(enhanced), beta, lim, twin)), out, "finish")
    if beta == 0 and lim is None:
        assert np.array_equal(out, enhanced)
    if lim is not None and beta == 0:  # the noisy share: |out - enhanced| = lim |noisy - enhanced|
        assert np.allclose(out, enhanced + lim * (noisy - enhanced), atol=1e-6)


# -- features (the frame graph's front-end half) -----------------------------------------------


def test_features_frame_numpy_equals_torch():
    rng = np.random.default_rng(6)
    spec = _complex(rng, (12, P48.freq_bins)) * np.float32(0.01)
    state = dsp.FrontEndState.initial(P48)
    erb_norm = torch.from_numpy(state.erb_norm_state.copy())[None]
    unit_norm = torch.from_numpy(state.unit_norm_state.copy())[None]
    erb_fb = torch.from_numpy(FE.erb_fb)
    for t in range(len(spec)):  # the norms carried frame to frame in both
        feat_erb, feat_spec = FE.features_frame(spec[t], state)
        out = spectral.features(*_pair(spec[t : t + 1]), erb_norm, unit_norm, erb_fb, float(FE.norm_alpha), P48.nb_df)
        feat_erb_t, feat_re, feat_im, erb_norm, unit_norm = out
        _assert_close(feat_erb_t.numpy()[0], feat_erb, f"feat_erb frame {t}")
        _assert_close(_joined(feat_re, feat_im)[0], feat_spec, f"feat_spec frame {t}")
    _assert_close(erb_norm.numpy()[0], state.erb_norm_state, "erb norm state")
    _assert_close(unit_norm.numpy()[0], state.unit_norm_state, "unit norm state")


# -- one frame (stream) == a block of frames (offline) -----------------------------------------


@pytest.mark.parametrize("thresholds", ["acting", "defaults"])
def test_numpy_stages_one_frame_equal_a_block(thresholds):
    """What the stream does hop by hop (T = 1, a window of O frames) gives the numbers the
    offline path gets for the whole block, bit for bit, gating, post-filter and limit included."""
    t, order = 32, 5
    window, mask, coefs, lsnr, th, past = _stage_inputs(np.random.default_rng(7), t, order, thresholds=thresholds)
    taps = stages.df_taps(coefs, order)

    def run(window, mask, taps, lsnr):
        gates = stages.gating(lsnr, th)
        enhanced = stages.mask_and_filter(window, mask, taps, FE.erb_widths, past, gates)
        return stages.finish(window[..., past : past + lsnr.shape[-1], :], enhanced, 0.02, 0.25, gates)

    block = run(window, mask, taps, lsnr)
    frames = np.concatenate([run(window[i : i + order], mask[i : i + 1], taps[i : i + 1], lsnr[i : i + 1])
                             for i in range(t)])
    assert block.shape == (t, P48.freq_bins)
    assert np.array_equal(frames, block)
    # and [B, T, ...] (a pool of streams): each stream's rows are its own call's
    batch = run(np.stack([window, window[::-1]]), np.stack([mask, mask]), np.stack([taps, taps]), np.stack([lsnr, lsnr]))
    assert np.array_equal(batch[0], block)
    assert np.array_equal(batch[1], run(window[::-1], mask, taps, lsnr))


def test_stream_skips_graphs_of_gated_stages_with_the_same_numbers():
    """The stream passes None for a stage no frame runs (it skips that graph call): same result."""
    window, mask, coefs, _, th, past = _stage_inputs(np.random.default_rng(8), 1)
    taps = stages.df_taps(coefs, 5)
    for lsnr in (-30.0, 50.0, 32.0):  # noise only, clean, ERB only
        gates = stages.gating(np.float32([lsnr]), th)
        full = stages.mask_and_filter(window, mask, taps, FE.erb_widths, past, gates)
        skipped = stages.mask_and_filter(
            window, mask if gates.apply_erb_mask[0] else None, taps if gates.apply_df[0] else None, FE.erb_widths, past, gates
        )
        assert np.array_equal(full, skipped), lsnr


@pytest.mark.parametrize("row_gather", [True, False], ids=["row-gather", "where"])
@pytest.mark.parametrize("name", ["dfn3", "dfnet4-lite", "dfnet4", "dfnet4-dfn3conv-gru"])
@torch.no_grad()
def test_gated_stages_keep_their_states_in_the_frame_module(name, row_gather, request):
    """The fused frame graph steps erb_dec / df_dec with the streams they run for
    (``base.STAGE_RUNS``) and applies no select of its own: every stateful block (conv buffers,
    Mamba, GRU) must return a skipped stream's states bit for bit, and a running stream's as the
    ungated step does. Three streams: all stages run / df_dec skipped / both skipped (zeros)."""
    from dfnet4_sdk.models import load_model
    from dfnet4_sdk.models.frame import FrameModule

    model = request.getfixturevalue("dfn3") if name == "dfn3" else load_model(name)
    frame = FrameModule(model.eval())
    frame.row_gather = row_gather
    d, rng = model.dsp, np.random.default_rng(0)
    state = {s.name: s.initial_tensor(3) for s in frame.state_specs()}
    samples = torch.zeros(3, 1, 1, d.hop_size_samples) if "frame_samples" in model.enc.input_names else None
    run_all = torch.tensor([-100.0, 100.0, 100.0])
    for _ in range(6):  # states that are not the initial ones
        spec = torch.from_numpy(rng.standard_normal((3, d.freq_bins, 2)).astype(np.float32) * 0.1)
        _, state = frame(spec, run_all.expand(3, 3), state, samples)
    thresholds = torch.tensor([[-100.0, 100.0, 100.0], [-100.0, 100.0, -100.0], [100.0, 100.0, 100.0]])
    _, gated = frame(spec, thresholds, state, samples)
    _, ungated = frame(spec, run_all.expand(3, 3), state, samples)
    runs = {"erb_dec": [True, True, False], "df_dec": [True, False, False]}
    checked = 0
    for comp in ("erb_dec", "df_dec"):
        for s in model.components[comp].state_specs():
            for i, ran in enumerate(runs[comp]):
                want = ungated[s.name][i] if ran else state[s.name][i]
                assert torch.equal(gated[s.name][i], want), (comp, s.name, i, ran)
                checked += 1
    assert checked >= 6 and set(gated) == {s.name for s in frame.state_specs()}
