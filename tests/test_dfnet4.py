"""DfNet4 / DfNet4Lite: causal and streamable for every preset and switch combination, one
interface with DFN3, multi-resolution DF and adaptive order aligned, configs round-trip."""

from __future__ import annotations

import itertools
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.models import spectral
from dfnet4_sdk.models.base import COMPONENT_NAMES, MODEL_OUTPUT_SHAPES
from dfnet4_sdk.models.complexity import (
    count_macs_per_second,
    count_parameters,
    preset_table,
)
from dfnet4_sdk.models.dfnet4 import PRESETS, DfNet4, DfNet4Lite
from dfnet4_sdk.models.mamba import BidirectionalMamba
from dfnet4_sdk.models.dfnet4_params import ModelParams4
from dfnet4_sdk.models.multires_df import embed_taps

DOCS = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"
STEP_TOL = 1e-5  # fp32, relative to each output's scale (lsnr is in dB, up to 35)
TIME_AXIS = {"lsnr": 1, "erb_mask": 2, "df_coefs": 1}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Per-frame graphs are tiny: one intra-op thread avoids spin-wait stalls on busy CI cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A tiny DfNet4 for the switch-combination sweep (the presets are tested at full size).
TINY = ModelParams4(
    conv_ch=4,
    enc_linear_groups=4,
    linear_groups=4,
    emb_hidden_dim=16,
    df_hidden_dim=16,
    df_num_layers=1,
    mamba_d_state=4,
    mamba_d_conv=3,
    branch_ch=4,
    fusion_dim=8,
)
BRANCHES = {
    "mag": (False, False, False),
    "phase": (True, True, False),
    "wave": (True, False, True),
    "both": (True, True, True),
}


def _combo(backbone: str, branches: str, multi_res: bool, adaptive: bool, lookahead: int) -> ModelParams4:
    hybrid, phase, wave = BRANCHES[branches]
    return replace(
        TINY,
        backbone=backbone,
        hybrid_encoder=hybrid,
        phase_branch=phase,
        waveform_branch=wave,
        multi_res_df=multi_res,
        adaptive_order=adaptive,
        df_lookahead_frames=lookahead,
        conv_lookahead_frames=lookahead,
        min_df_order=lookahead + 1 if lookahead else 2,
    )


COMBOS = list(itertools.product(["mamba", "gru"], list(BRANCHES), [False, True], [False, True], [0, 2]))


def _frames(model: DfNet4, t: int, b: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d = model.dsp
    shapes = {
        "feat_erb": (b, 1, t, d.nb_erb),
        "feat_spec": (b, 2, t, d.nb_df),
        "frame_samples": (b, 1, t, d.hop_size_samples),
    }
    return {k: torch.randn(shapes[k], generator=g) for k in model.frame_input_names}


def _build(params: ModelParams4, seed: int = 0) -> DfNet4:
    torch.manual_seed(seed)
    return DfNet4(params).eval()


@torch.no_grad()
def _causality_error(model: DfNet4, t: int = 60, t0: int = 40) -> float:
    frames = _frames(model, t)
    perturbed = {k: v.clone() for k, v in frames.items()}
    for v in perturbed.values():
        v[:, :, t0:] += torch.randn_like(v[:, :, t0:]) * 3.0
    a, _ = model.forward_components(frames)
    b, _ = model.forward_components(perturbed)
    past = max(float((a[k].narrow(TIME_AXIS[k], 0, t0) - b[k].narrow(TIME_AXIS[k], 0, t0)).abs().max()) for k in a)
    future = min(
        float((a[k].narrow(TIME_AXIS[k], t0, t - t0) - b[k].narrow(TIME_AXIS[k], t0, t - t0)).abs().max()) for k in a
    )
    assert future > 0, "perturbing the future must change the future (else the test checks nothing)"
    return past


@torch.no_grad()
def _step_error(model: DfNet4, t: int) -> tuple[float, float]:
    """Max relative error of step-by-step vs sequence over t frames (outputs, final states)."""
    frames = _frames(model, t, b=1, seed=1)
    seq, seq_state = model.forward_components(frames)
    state, outs = model.initial_state(1), []
    for i in range(t):
        out, state = model.step({k: v[:, :, i : i + 1] for k, v in frames.items()}, state)
        outs.append(out)
    err = 0.0
    for k in MODEL_OUTPUT_SHAPES:
        stepped = torch.cat([o[k] for o in outs], dim=TIME_AXIS[k])
        err = max(err, float((stepped - seq[k]).abs().max() / seq[k].abs().max().clamp_min(1.0)))
    state_err = max(
        float((state[k] - seq_state[k]).abs().max() / seq_state[k].abs().max().clamp_min(1.0)) for k in state
    )
    return err, state_err


# -- presets ------------------------------------------------------------------------------------
def test_presets_and_families():
    assert {"dfnet4", "dfnet4-lite", "dfnet4-ll", "dfnet4-16k"} <= set(PRESETS)
    assert PRESETS["dfnet4-ll"].conv_lookahead_frames == 0 and PRESETS["dfnet4-ll"].df_lookahead_frames == 0
    assert PRESETS["dfnet4-16k"].dsp.sample_rate_hz == 16000
    lite = DfNet4Lite()
    assert lite.family == "dfnet4-lite" and isinstance(lite, DfNet4)
    assert DfNet4.from_preset("dfnet4-lite").family == "dfnet4-lite"
    assert DfNet4.from_preset("dfnet4").family == "dfnet4"
    with pytest.raises(ConfigError, match="variant"):
        DfNet4Lite(PRESETS["dfnet4"])
    with pytest.raises(ConfigError, match="unknown DfNet4 preset"):
        DfNet4.from_preset("dfnet5")


def test_each_component_may_choose_its_backbone():
    mix = PRESETS["dfnet4-dfn3conv-mix"]
    assert [mix.backbone_of(c) for c in ("enc", "erb_dec", "df_dec")] == ["gru", "mamba", "gru"]
    model = DfNet4(mix)
    assert hasattr(model.enc.backbone, "gru") and hasattr(model.erb_dec.backbone, "layers")
    assert {s.name for s in model.state_specs()} >= {"enc_gru", "df_dec_gru"}
    with pytest.raises(ConfigError) as e:
        replace(PRESETS["dfnet4"], enc_backbone="lstm", df_dec_backbone="rnn")
    assert "enc_backbone must be" in str(e.value) and "df_dec_backbone must be" in str(e.value)


def test_parameter_counts_and_macs_are_recorded():
    counts = {}
    for name in PRESETS:
        model = DfNet4.from_preset(name)
        counts[name] = count_parameters(model)["total"]
        assert not any(isinstance(m, BidirectionalMamba) for m in model.modules()), name
    assert count_macs_per_second(DfNet4.from_preset("dfnet4-lite")) < count_macs_per_second(
        DfNet4.from_preset("dfnet4")
    )
    table = preset_table()
    print("\n" + table)
    assert counts["dfnet4-lite"] <= 600_000
    assert 0.3 <= counts["dfnet4-lite"] / counts["dfnet4"] <= 0.6  # "about half"
    assert table in DOCS.read_text(), "docs/ARCHITECTURE.md table is stale: paste preset_table()"


# -- causality and streaming ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_is_causal(name):
    err = _causality_error(_build(PRESETS[name]))
    print(f"\ncausality {name}: max change of past outputs {err:.1e}")
    assert err <= 1e-6


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(map(str, c)))
def test_every_switch_combination_is_causal_and_streams_exactly(combo):
    model = _build(_combo(*combo))
    assert _causality_error(model, t=24, t0=14) <= 1e-6
    err, state_err = _step_error(model, t=12)
    assert err <= STEP_TOL and state_err <= STEP_TOL


@pytest.mark.parametrize("name", list(PRESETS))
def test_step_equals_sequence_over_300_frames(name):
    err, state_err = _step_error(_build(PRESETS[name]), t=300)
    print(f"\nstep vs sequence {name}: outputs {err:.1e}, states {state_err:.1e}")
    assert err <= STEP_TOL and state_err <= STEP_TOL


@torch.no_grad()
def test_sequence_resumes_from_carried_state():
    model = _build(PRESETS["dfnet4"])
    frames = _frames(model, 90)
    full, _ = model.forward_components(frames)
    a, st = model.forward_components({k: v[:, :, :50] for k, v in frames.items()})
    b, st = model.forward_components({k: v[:, :, 50:] for k, v in frames.items()}, st)
    for k in full:
        joined = torch.cat([a[k], b[k]], dim=TIME_AXIS[k])
        assert (joined - full[k]).abs().max() <= 1e-5 * max(1.0, float(full[k].abs().max())), k


def test_interface_matches_the_contract():
    for name in ("dfnet4", "dfnet4-lite"):
        model = _build(PRESETS[name])
        assert tuple(model.components) == COMPONENT_NAMES
        assert model.enc.output_names == ("e0", "e1", "e2", "e3", "emb", "c0", "lsnr")
        assert model.erb_dec.input_names == ("emb", "e3", "e2", "e1", "e0")
        assert model.df_dec.input_names == ("emb", "c0")
        names = [s.name for s in model.state_specs()]
        assert "enc_mamba0_conv" in names and "enc_mamba0_ssm" in names and "df_dec_convp" in names
        frames = _frames(model, 7, b=3)
        out, state = model.forward_components(frames)
        d, o = model.dsp, model.df_order
        assert out["lsnr"].shape == (3, 7, 1)
        assert out["erb_mask"].shape == (3, 1, 7, d.nb_erb)
        assert out["df_coefs"].shape == (3, 7, d.nb_df, 2 * o)
        assert all(state[s.name].shape == (3, *s.shape[1:]) for s in model.state_specs())
    assert _build(PRESETS["dfnet4"]).frame_input_names == ("feat_erb", "feat_spec", "frame_samples")
    assert _build(PRESETS["dfnet4-lite"]).frame_input_names == ("feat_erb", "feat_spec")
    model = _build(PRESETS["dfnet4"])
    spec = torch.randn(1, 1, 10, model.dsp.freq_bins, 2)
    with pytest.raises(ValueError, match="frame_samples"):
        model(spec, torch.randn(1, 1, 10, 32), torch.randn(1, 2, 10, 96))


# -- DF coefficients: taps, orders, blend ---------------------------------------------------------
def _deep_filter(spec, coefs, order, lookahead):
    """spectral.deep_filter over a whole sequence: spec [B, 1, T, F_all, 2], coefs [B, T, F, 2*O]
    -> [B, 1, T, F, 2] (zero frames beyond the ends)."""
    x = torch.nn.functional.pad(spec[:, 0], (0, 0, 0, 0, order - 1 - lookahead, lookahead))
    re, im = spectral.deep_filter(x[..., 0], x[..., 1], *spectral.df_coefs_planar(coefs, order))
    return torch.stack([re, im], dim=-1).unsqueeze(1)


@pytest.mark.parametrize("order,lookahead", [(2, 0), (3, 2), (4, 1), (5, 2)])
def test_lower_order_taps_stay_aligned_to_the_current_frame(order, lookahead):
    """A lower-order filter embedded in the 5-tap layout filters frames t-(o-1-Ld) .. t+Ld."""
    big, b, t, f = 5, 1, 12, 6
    spec = torch.randn(b, 1, t, f, 2)
    small = torch.randn(b, t, f, 2 * order)
    filtered = _deep_filter(spec, embed_taps(small, big, f), big, lookahead)
    c = small.reshape(b, t, f, order, 2)
    expected = torch.zeros(b, t, f, 2)
    for ti in range(t):
        for j in range(order):
            src = ti - (order - 1 - lookahead) + j
            if 0 <= src < t:
                xr, xi = spec[:, 0, src, :, 0], spec[:, 0, src, :, 1]
                cr, ci = c[:, ti, :, j, 0], c[:, ti, :, j, 1]
                expected[:, ti, :, 0] += xr * cr - xi * ci
                expected[:, ti, :, 1] += xr * ci + xi * cr
    assert torch.allclose(filtered[:, 0], expected, atol=1e-6)


@torch.no_grad()
def test_adaptive_order_zeroes_only_the_oldest_taps():
    p = PRESETS["dfnet4"]
    model = _build(p)
    head = model.df_dec.head
    o, la = p.df_order, p.df_lookahead_frames
    frames = _frames(model, 20)
    for i, order in enumerate(head.orders):
        last = head.order_net[-1]
        last.weight.zero_()
        last.bias.copy_(torch.nn.functional.one_hot(torch.tensor(i), len(head.orders)).float() * 10)
        coefs = model.forward_components(frames)[0]["df_coefs"]
        if order < o:
            assert coefs[..., : 2 * (o - order)].abs().max() == 0, order
        current = coefs[..., 2 * (o - 1 - la) : 2 * (o - la)]  # the tap of frame t
        assert current.abs().min(dim=-1).values.max() > 0, order


def test_order_choice_is_gumbel_in_training_and_hard_in_eval():
    model = _build(PRESETS["dfnet4"])
    h = torch.randn(2, 9, PRESETS["dfnet4"].df_hidden_dim)
    head = model.df_dec.head
    hard = head.order_weights(h)
    assert set(hard.unique().tolist()) <= {0.0, 1.0} and torch.all(hard.sum(-1) == 1)
    head.train()
    soft = head.order_weights(h)
    assert torch.allclose(soft.sum(-1), torch.ones(2, 9)) and ((soft > 0) & (soft < 1)).any()


@torch.no_grad()
def test_blend_never_passes_noisy_bins():
    p = PRESETS["dfnet4"]
    model = _build(p)
    head = model.df_dec.head
    w = head.blend_weights()  # [R, F]
    assert torch.allclose(w.sum(0), torch.ones(p.dsp.nb_df))
    for r, (bins, _) in enumerate(p.resolutions):
        assert w[r, :bins].min() > 0 and (bins == p.dsp.nb_df or w[r, bins:].abs().max() == 0)
    # With every coefficient source silenced, the filter outputs zeros: nothing unfiltered remains.
    for m in (head.heads, model.df_dec.convp):
        for q in m.parameters():
            q.zero_()
    frames = _frames(model, 6)
    coefs = model.forward_components(frames)[0]["df_coefs"]
    spec = torch.randn(1, 1, 6, p.dsp.freq_bins, 2)
    assert _deep_filter(spec, coefs, p.df_order, p.df_lookahead_frames).abs().max() == 0


# -- training behaviour -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dfnet4", "dfnet4-lite"])
def test_gradients_flow_through_every_branch(name):
    model = _build(PRESETS[name]).train()
    t, d = 16, model.dsp
    spec = torch.randn(2, 1, t, d.freq_bins, 2)
    frames = _frames(model, t, b=2)
    enhanced, mask, lsnr, coefs = model(spec, frames["feat_erb"], frames["feat_spec"], frames.get("frame_samples"))
    loss = enhanced.pow(2).mean() + mask.mean() + lsnr.mean() * 1e-2 + coefs.pow(2).mean()
    loss.backward()
    missing = [n for n, q in model.named_parameters() if q.grad is None or q.grad.abs().sum() == 0]
    assert not missing, missing


@torch.no_grad()
def test_eval_is_deterministic():
    a, b = _build(PRESETS["dfnet4"]), _build(PRESETS["dfnet4"])
    frames = _frames(a, 30)
    out1, out2, out3 = a.forward_components(frames)[0], a.forward_components(frames)[0], b.forward_components(frames)[0]
    for k in out1:
        assert torch.equal(out1[k], out2[k]) and torch.equal(out1[k], out3[k]), k


# -- save / load / configs ---------------------------------------------------------------------
@torch.no_grad()
def test_checkpoint_round_trip(tmp_path):
    from dfnet4_sdk.models import load_checkpoint, save_checkpoint

    for name in ("dfnet4", "dfnet4-lite", "dfnet4-16k"):
        model = _build(PRESETS[name], seed=3)
        path = save_checkpoint(model, tmp_path / f"{name}.pt")
        loaded = load_checkpoint(path)
        assert isinstance(loaded, DfNet4) and loaded.family == model.family
        assert loaded.params == model.params
        frames = _frames(model, 12)
        a, b = model.forward_components(frames)[0], loaded.forward_components(frames)[0]
        assert all(torch.equal(a[k], b[k]) for k in a)
        again = DfNet4.from_config(model.config_dict())
        assert again.params == model.params and again.family == model.family


@pytest.mark.parametrize("name", list(PRESETS))
def test_params_files_and_template_round_trip(tmp_path, name):
    p = PRESETS[name]
    for suffix in (".toml", ".json"):
        assert ModelParams4.load(p.save(tmp_path / f"p{suffix}")) == p
    template = tmp_path / "template.toml"
    template.write_text(ModelParams4.generate_config_template(name))
    assert ModelParams4.load(template) == p
    assert "# Mamba SSM state size N" in template.read_text()


def test_invalid_params_raise_config_errors_that_say_how_to_fix():
    with pytest.raises(ConfigError, match="unknown ModelParams4 keys"):
        ModelParams4.from_dict({"conv_channels": 3})
    with pytest.raises(ConfigError, match="set them false or enable hybrid_encoder"):
        ModelParams4(hybrid_encoder=False)
    with pytest.raises(ConfigError, match="min_df_order"):
        ModelParams4(min_df_order=2)  # with df_lookahead 2, order 2 would drop the current frame
    with pytest.raises(ConfigError, match="full-band"):
        ModelParams4(df_resolutions=((48, 5), (24, 3)))
    with pytest.raises(ConfigError, match="divide by groups"):
        ModelParams4(conv_ch=5)
    with pytest.raises(ConfigError, match="backbone"):
        ModelParams4(backbone="lstm")


DFN3_INI = """
[train]
model = deepfilternet3
[df]
sr = 48000
fft_size = 960
hop_size = 480
nb_erb = 32
nb_df = 96
norm_tau = 1
lsnr_max = 35
lsnr_min = -15
min_nb_erb_freqs = 2
df_order = 5
df_lookahead = 2
[deepfilternet]
conv_lookahead = 2
conv_ch = 64
conv_depthwise = True
convt_depthwise = True
conv_kernel = 1,3
conv_kernel_inp = 3,3
emb_hidden_dim = 256
emb_num_layers = 3
df_hidden_dim = 256
df_num_layers = 2
df_pathway_kernel_size_t = 5
enc_linear_groups = 32
linear_groups = 16
df_gru_skip = groupedlinear
conv_dec_mode = transposed
mask_pf = False
"""


def test_dfn3_config_migration(tmp_path, caplog):
    ini = tmp_path / "config.ini"
    ini.write_text(DFN3_INI)
    with caplog.at_level(logging.WARNING):
        p, warnings = ModelParams4.from_dfn3_config(ini)
    assert (p.conv_ch, p.emb_hidden_dim, p.df_hidden_dim, p.df_num_layers) == (64, 256, 256, 2)
    assert (p.enc_num_layers, p.erb_dec_num_layers, p.df_pathway_kernel_t) == (1, 2, 5)
    assert (p.df_order, p.df_lookahead_frames, p.conv_lookahead_frames) == (5, 2, 2)
    assert p.enc_linear_groups == 32 and p.dsp == PRESETS["dfnet4"].dsp
    text = "\n".join(warnings)
    assert "df_gru_skip" in text and "new in DfNet4" in text and "mamba_d_state" in text
    assert "DFN3 config migration" in caplog.text
    assert DfNet4(p).family == "dfnet4"
    with pytest.raises(ConfigError, match="sections"):
        ModelParams4.from_dfn3_config("[df]\nsr = 48000\n")


# -- the torch streaming runtime -----------------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_runs_through_the_streaming_runtime(name):
    from dfnet4_sdk.runtime import Runtime

    model = _build(PRESETS[name])
    rt = Runtime(model=model, backend="torch")
    assert rt.model_family == model.family
    component_states = [s.name for s in rt.manifest.states if s.graph in COMPONENT_NAMES]
    assert component_states == [s.name for s in model.state_specs()]
    sr = rt.sample_rate
    audio = (np.random.default_rng(0).standard_normal(sr * 3 // 10) * 0.1).astype(np.float32)
    out = rt.enhance(audio, sr)
    assert out.shape == audio.shape and np.isfinite(out).all()


# -- export friendliness of the step form ----------------------------------------------------------
class _StepGraph(torch.nn.Module):
    """One component's step with positional tensors (names are given to the exporter)."""

    def __init__(self, comp):
        super().__init__()
        self.comp, self.specs = comp, comp.state_specs()

    def forward(self, *args):
        n = len(self.comp.input_names)
        out, new = self.comp.step(
            dict(zip(self.comp.input_names, args[:n])), {s.name: a for s, a in zip(self.specs, args[n:])}
        )
        return tuple(out[k] for k in self.comp.output_names) + tuple(new[s.name] for s in self.specs)


@pytest.mark.parametrize("name", ["dfnet4", "dfnet4-lite", "dfnet4-dfn3conv"])
def test_step_form_exports_to_onnx_and_matches(name):
    """Legacy exporter, opset 17, as the ONNX exporter uses; plain ops only (no einsum, cumsum,
    chunk, GRU cells, loops), and onnxruntime reproduces torch."""
    import io
    import warnings

    ort = pytest.importorskip("onnxruntime")
    model = _build(PRESETS[name])
    values = {k: v for k, v in _frames(model, 1, seed=5).items()}
    for cname, comp in model.components.items():
        graph = _StepGraph(comp).eval()
        args = [values[k] for k in comp.input_names] + [torch.randn(s.shape) * 0.1 for s in graph.specs]
        kinds = {n.kind() for n in torch.jit.trace(graph, tuple(args)).inlined_graph.nodes()}
        banned = [
            k for k in kinds if any(b in k for b in ("einsum", "cumsum", "cumprod", "chunk", "gru", "Loop", "If"))
        ]
        assert not banned, (cname, banned)
        in_names = list(comp.input_names) + [s.input_name for s in graph.specs]
        out_names = list(comp.output_names) + [s.output_name for s in graph.specs]
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph, tuple(args), f, dynamo=False, opset_version=17, input_names=in_names, output_names=out_names
            )
        got = ort.InferenceSession(f.getvalue()).run(None, {k: a.numpy() for k, a in zip(in_names, args)})
        with torch.no_grad():
            ref = graph(*args)
        for n, g, r in zip(out_names, got, ref):
            assert np.abs(g - r.numpy()).max() <= 1e-5 * max(1.0, float(r.abs().max())), (cname, n)
        values.update(dict(zip(comp.output_names, ref)))
