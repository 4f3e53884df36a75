"""Starting a student from DFN3 (dfnet4_sdk.models.dfn3_init) and intermediate distillation
(training/objective.py ``distill_hidden``), on real audio."""

from __future__ import annotations

import pytest
import torch
from audio_data import load_clip

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.models.dfn3_init import init_from_dfn3
from dfnet4_sdk.models.dfnet4 import PRESETS, DfNet4
from dfnet4_sdk.training.config import LossConfig
from dfnet4_sdk.training.data import features
from dfnet4_sdk.training.distill import run_model
from dfnet4_sdk.training.objective import Objective

ENC_CONVS = ("e0", "e1", "e2", "e3", "c0")  # the encoder conv stages, before any backbone
HIDDEN = ("emb", "erb_dec_h", "erb_dec_x", "df_dec_h")


def _student(preset: str, dfn3, seed: int = 0):
    torch.manual_seed(seed)
    student = DfNet4.from_preset(preset).eval()
    return student, init_from_dfn3(student, dfn3)


@pytest.fixture(scope="module")
def real_batch(dfn3):
    audio = load_clip("noisy_real/dns5_blind_street_48k.flac", seconds=3.0)  # real noisy street recording
    return {k: v[None] for k, v in features(audio, dfn3.dsp).items()}


@torch.no_grad()
def _enc_outputs(model, batch):
    inputs = {k: batch[k] for k in model.enc.input_names}
    return model.enc(inputs, None)[0]


def test_mamba_preset_copies_every_conv_and_linear_exactly(dfn3, real_batch):
    student, report = _student("dfnet4-dfn3conv", dfn3)
    s_state, t_state = student.state_dict(), dfn3.state_dict()
    copied = dict(report.copied)
    for t_name, s_name in copied.items():
        assert torch.equal(s_state[s_name], t_state[t_name]), s_name
    # every DFN3 conv and linear copies; only the GRU cores (replaced by Mamba) and the unused alpha do not
    skipped = {name for name, _ in report.skipped}
    assert all(".gru." in n or ".df_fc_a." in n for n in skipped), sorted(skipped)
    assert all(n.startswith(("enc.backbone.layers.", "erb_dec.backbone.layers.", "df_dec.backbone.layers."))
               for n in report.untouched), report.untouched
    assert len(copied) == 49 and report.copied_values(s_state) == 160_624
    s_out, t_out = _enc_outputs(student, real_batch), _enc_outputs(dfn3, real_batch)
    errors = {k: float((s_out[k] - t_out[k]).abs().max()) for k in ENC_CONVS}
    print(f"\nencoder conv outputs, DFN3-initialised student vs DFN3 on real audio: {errors}")
    assert max(errors.values()) < 1e-6
    assert float(t_out["e3"].abs().max()) > 0.1  # the comparison is on real activations, not zeros


def test_gru_preset_starts_equal_to_dfn3(dfn3, real_batch):
    student, report = _student("dfnet4-dfn3conv-gru", dfn3)
    assert not report.untouched and [n for n, _ in report.skipped] == ["df_dec.df_fc_a.weight", "df_dec.df_fc_a.bias"]
    with torch.no_grad():
        s, t = run_model(student, real_batch), run_model(dfn3, real_batch)
    err = {k: float((s[k] - t[k]).abs().max()) for k in ("erb_mask", "df_coefs", "lsnr", "enhanced")}
    print(f"\nDFN3-initialised GRU preset vs DFN3, max abs error: {err}")
    assert max(err.values()) < 1e-4


def _outputs(model, batch):
    with torch.no_grad():
        return run_model(model, batch)


def _max_errors(a, b):
    return {k: float((a[k] - b[k]).abs().max()) for k in ("erb_mask", "df_coefs", "lsnr", "enhanced")}


def test_splice_assemblies_equal_their_sources_on_real_audio(dfn3, real_batch):
    """All components from DFN3 is DFN3; none is the student; the mixed preset takes enc and
    df_dec from DFN3 exactly (its enc outputs equal DFN3's) and erb_dec from the student."""
    from dfnet4_sdk.training.splice import assemble

    student, _ = _student("dfnet4-dfn3conv", dfn3, seed=3)  # Mamba layers fresh: far from DFN3
    t = _outputs(dfn3, real_batch)
    all_dfn3 = _max_errors(_outputs(assemble(student, dfn3, {"enc", "erb_dec", "df_dec"}), real_batch), t)
    none = _max_errors(_outputs(assemble(student, dfn3, set()), real_batch), _outputs(student, real_batch))
    print(f"\nsplice vs its source, max abs error: all DFN3 {all_dfn3}, all student {none}")
    assert max(all_dfn3.values()) < 1e-4 and max(none.values()) == 0.0
    mix = assemble(student, dfn3, {"enc", "df_dec"})
    assert mix.params.backbone_of("enc") == "gru" and mix.params.backbone_of("erb_dec") == "mamba"
    assert mix.params == PRESETS["dfnet4-dfn3conv-mix"]  # the preset is this assembly's shape
    m_enc, t_enc = _enc_outputs(mix, real_batch), _enc_outputs(dfn3, real_batch)
    assert max(float((m_enc[k] - t_enc[k]).abs().max()) for k in ("emb", "e3", "c0")) < 1e-5
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in mix.state_dict().items() if k.startswith("erb_dec."))
    assert _max_errors(_outputs(mix, real_batch), t)["erb_mask"] > 1e-3  # the student's erb_dec is in use


def test_take_components_reports_every_mismatch(dfn3):
    from dfnet4_sdk.models.dfn3_init import take_components

    mix = DfNet4.from_preset("dfnet4-dfn3conv-mix")
    with pytest.raises(ConfigError) as e:
        take_components(mix, DfNet4.from_preset("dfnet4-dfn3conv"), ["enc", "df_dec", "decoder"])
    msg = str(e.value)
    assert "no component 'decoder'" in msg
    assert "enc.backbone.gru" in msg and "df_dec.backbone.gru" in msg  # the student's Mamba has no GRU tensors
    assert "not in the source" in msg


def test_init_refuses_another_front_end(dfn3):
    with pytest.raises(ConfigError, match="front-end"):
        init_from_dfn3(DfNet4.from_preset("dfnet4-16k"), dfn3)


def test_lite_preset_gets_nothing_and_says_why(dfn3):
    student, report = _student("dfnet4-lite", dfn3)
    assert not report.copied and len(report.skipped) == len(dfn3.state_dict())


def test_hidden_distillation_is_zero_for_a_copy_and_positive_otherwise(dfn3, real_batch):
    cfg = LossConfig(distill_hidden=1.0)
    student, _ = _student("dfnet4-dfn3conv-gru", dfn3)
    objective = Objective(cfg, student, dfn3)
    with torch.no_grad():
        teacher_out = run_model(dfn3, real_batch)
        same = objective._distill_terms(run_model(student, real_batch), teacher_out)
        assert {f"d_h_{n}" for n in HIDDEN} <= set(same)
        print("\nhidden terms, copy of the teacher:", {k: float(v) for k, v in same.items() if k.startswith("d_h_")})
        assert all(float(same[f"d_h_{n}"]) < 1e-9 for n in HIDDEN)
        student.erb_dec.backbone.linear_out.weight.mul_(1.1)  # erb_dec's hidden states change, emb and df_dec's do not
        student.df_dec.skip.weight.mul_(1.1)
        changed = objective._distill_terms(run_model(student, real_batch), teacher_out)
    print("hidden terms, perturbed decoders:", {k: float(v) for k, v in changed.items() if k.startswith("d_h_")})
    assert float(changed["d_h_emb"]) < 1e-9
    for name in ("erb_dec_h", "erb_dec_x", "df_dec_h"):
        assert float(changed[f"d_h_{name}"]) > 1e-4, name


def test_hidden_distillation_skips_mismatched_shapes(dfn3, real_batch):
    student = DfNet4.from_preset("dfnet4-lite").eval()
    objective = Objective(LossConfig(distill_hidden=1.0), student, dfn3)
    with torch.no_grad():
        terms = objective._distill_terms(run_model(student, real_batch), run_model(dfn3, real_batch))
    assert not any(k.startswith("d_h_") for k in terms) and "d_spectral" in terms


def test_presets_match_dfn3_widths():
    for name in ("dfnet4-dfn3conv", "dfnet4-dfn3conv-gru"):
        p = PRESETS[name]
        assert p.dfn3_layout and p.conv_ch == 64 and p.emb_dim == 512 and p.df_backbone_groups == 8


def test_learning_curve_points_count_audio_hours_and_wall_time(tmp_path):
    import json

    from dfnet4_sdk.training.learning_curve import run_points

    (tmp_path / "config.toml").write_text("[data]\nsegment_s = 1.5\n[optim]\nbatch_size = 4\n")
    rows = [{"step": 10, "s_per_step": 2.0}, {"step": 20, "s_per_step": 3.0}, {"step": 30, "s_per_step": 1.0}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "validated").mkdir()
    for step in (20, 30):
        (tmp_path / "validated" / f"step_{step:07d}.pt").write_bytes(b"")
    points = run_points(tmp_path)
    assert [(s, round(h, 6), round(w, 6)) for s, h, w, _ in points] == [
        (20, round(20 * 6 / 3600, 6), round(50 / 60, 6)),  # 20 steps x 4 items x 1.5 s; 10x2 + 10x3 s
        (30, round(30 * 6 / 3600, 6), round(60 / 60, 6)),
    ]


def test_splice_cli_says_what_does_not_splice(tmp_path, capsys):
    """A student at other widths ends in a message naming the mismatches, not a traceback."""
    from dfnet4_sdk.models import save_checkpoint
    from dfnet4_sdk.training.splice import main

    save_checkpoint(DfNet4.from_preset("dfnet4-lite"), tmp_path / "lite.pt")
    with pytest.raises(SystemExit, match="does not splice with DFN3") as e:
        main([str(tmp_path / "lite.pt")])
    assert "shape" in str(e.value)
    with pytest.raises(SystemExit, match="held-out sets"):
        main([str(tmp_path / "lite.pt"), "--data-root", str(tmp_path)])
