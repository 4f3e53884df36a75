"""Training: data mixing, licence filtering, losses, train/distill loops, resume, DNSMOS proxy.

Runs on CPU in well under a minute with training/configs/tiny.toml."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from audio_data import DATA_DIR

from dfnet4_sdk.errors import ModelImportError, ModelNotAvailableError
from dfnet4_sdk.models.dfnet4 import DfNet4
from dfnet4_sdk.training import losses as L
from dfnet4_sdk.training.config import TrainConfig
from dfnet4_sdk.training.data import MixtureDataset, build_lists, power
from dfnet4_sdk.training.distill import run_model

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "training" / "configs" / "tiny.toml"
DATA_ROOT = DATA_DIR.resolve()  # conftest skips the tests that use it when a bare clone has no data


def tiny_cfg(**optim) -> TrainConfig:
    cfg = TrainConfig.load(TINY)
    data = dataclasses.replace(cfg.data, data_root=str(DATA_ROOT))
    return dataclasses.replace(cfg, data=data, optim=dataclasses.replace(cfg.optim, **optim))


@pytest.fixture(scope="module")
def dataset():
    cfg = tiny_cfg()
    return MixtureDataset(cfg.data, DfNet4.from_preset("dfnet4-lite").dsp, build_lists(cfg.data))


def teacher_or_skip():
    from dfnet4_sdk.models import load_model

    try:
        return load_model("dfn3")
    except ModelNotAvailableError as e:
        pytest.skip(f"DFN3 teacher not available ({e}); install the [dfn3] extra")


def test_licence_filter_excludes_nc_eval_and_unstated():
    cfg = tiny_cfg().data
    shipped = build_lists(dataclasses.replace(cfg, include_not_shippable=False))
    everything = build_lists(dataclasses.replace(cfg, include_not_shippable=True))
    for lists in (shipped, everything):
        paths = [str(e.path) for e in lists.speech + lists.noise + lists.rir]
        assert paths, "no training files found"
        assert not any("freesound_33711" in p or "/dev_eval/" in p or "/ears/" in p for p in paths)
        assert not any("vbd_train_p287" in p or "/noisy_real/" in p for p in paths)
        assert not any("NC" in e.licence for e in lists.speech + lists.noise)
    assert not any("not stated" in e.licence for e in shipped.noise + shipped.rir)
    assert len(everything.noise) > len(shipped.noise)


def test_optional_corpora_are_listed_only_when_named_and_held_out_sets_never(tmp_path):
    from dfnet4_sdk.errors import ConfigError
    from dfnet4_sdk.training.data import CORPORA

    base = tiny_cfg().data
    folders = {name: folder for name, (folder, _) in CORPORA.items()}
    rel = lambda e: e.path.relative_to(DATA_ROOT).as_posix()
    # Without `corpora` none of the new folders is used (before, all of them fell into "real").
    plain = [rel(e) for e in build_lists(base).speech]
    assert plain and not any(p.startswith(tuple(folders.values())) for p in plain)
    lists = build_lists(dataclasses.replace(base, corpora=tuple(CORPORA)))
    groups: dict[str, set[str]] = {}
    for e in lists.speech:
        groups.setdefault(e.group, set()).add("/".join(rel(e).split("/")[:2]) + "/")
    for name, (folder, group) in CORPORA.items():
        assert folder in groups[group], (name, sorted(groups))
    assert groups["acted"] == {"speech/0ad_voices/"} and groups["ivr_wideband"] == {"speech/asterisk_wb/"}
    everything = [rel(e) for e in lists.speech + lists.noise + lists.rir + lists.noisy]
    assert not any(p.startswith(("dev_eval/", "noisy_real/")) or "freesound_33711" in p or "vbd_train_p287" in p for p in everything)
    assert not any("NC" in e.licence for e in lists.speech + lists.noise)
    assert {e.band_limit_hz for e in lists.speech if e.group == "librispeech"} == {8000.0}
    # A screened file below the threshold is dropped, one above it kept, unlisted files untouched.
    libri = sorted(p for p in everything if p.startswith(folders["librispeech"]))
    screen = tmp_path / "screen.csv"
    screen.write_text(f"path,sig,bak,ovrl,p808\n{libri[0]},3.0,3.0,2.5,3.0\n{libri[1]},3.4,4.0,3.2,3.5\n")
    screened = [rel(e) for e in build_lists(dataclasses.replace(
        base, corpora=("librispeech",), speech_screen=str(screen), min_screen_ovrl=3.0)).speech]
    assert libri[0] not in screened and libri[1] in screened and libri[2] in screened
    # Every mistake in the corpus / group settings is reported at once.
    with pytest.raises(ConfigError) as err:
        build_lists(dataclasses.replace(base, corpora=("librispeech", "timit"), group_weights=("acted=x", "nope=1")))
    assert all(s in str(err.value) for s in ("'timit'", "'acted=x'", "'nope=1'"))


def test_real_config_uses_the_new_corpora_screened_and_never_the_held_out_sets():
    import csv

    from dfnet4_sdk.training.screen import load_screen

    cfg = TrainConfig.load(REPO / "training" / "configs" / "dfnet4_lite_distill.toml").data
    cfg = dataclasses.replace(cfg, data_root=str(DATA_ROOT), speech_screen=str(REPO / cfg.speech_screen))
    screen = load_screen(cfg.speech_screen)
    with (DATA_ROOT / "manifest.csv").open(newline="") as f:
        libri = {r["path"] for r in csv.DictReader(f) if r["path"].startswith("speech/librispeech/")}
    assert libri and libri <= set(screen), "every LibriSpeech file is scored once"
    used = {e.path.relative_to(DATA_ROOT).as_posix() for e in build_lists(cfg).speech}
    below = {p for p, s in screen.items() if s["ovrl"] < cfg.min_screen_ovrl}
    assert cfg.min_screen_ovrl >= 3.0 and 0 < len(below) < len(screen) / 4
    assert not used & below and (set(screen) - below) <= used
    assert {p.split("/")[1] for p in used} >= {"librispeech", "asterisk_wb", "ljspeech", "thorsten", "vctk_seflow", "0ad_voices"}
    assert not any(p.startswith(("dev_eval/", "noisy_real/")) or "freesound_33711" in p for p in used)


def test_group_weights_set_how_often_each_speech_group_is_drawn():
    from dfnet4_sdk.training.data import CORPORA

    cfg = dataclasses.replace(tiny_cfg().data, corpora=tuple(CORPORA), group_weights=("acted=0.1", "synthetic=0"))
    ds = MixtureDataset(cfg, DfNet4.from_preset("dfnet4-lite").dsp, build_lists(cfg))
    assert "synthetic" not in ds.group_names and "acted" in ds.group_names
    rng = np.random.default_rng(0)
    picks = np.bincount([ds.pick_group(rng) for _ in range(20000)], minlength=len(ds.group_names)) / 20000
    share = dict(zip(ds.group_names, picks))
    expected_acted = 0.1 / (len(ds.group_names) - 1 + 0.1)  # every other group weighs 1
    assert abs(share["acted"] - expected_acted) < 0.006, share
    assert all(abs(v - (1 - expected_acted) / (len(ds.group_names) - 1)) < 0.02 for g, v in share.items() if g != "acted")


def test_mixtures_are_deterministic_by_seed_and_index(dataset):
    other = MixtureDataset(dataset.cfg, dataset.params, build_lists(dataset.cfg))
    for i in (0, 5, 17):
        a, b = dataset.item(i), other.item(i)
        np.testing.assert_array_equal(a.noisy, b.noisy)
        np.testing.assert_array_equal(a.clean, b.clean)
    reseeded = MixtureDataset(dataclasses.replace(dataset.cfg, seed=1), dataset.params, build_lists(dataset.cfg))
    assert not np.array_equal(reseeded.item(0).noisy, dataset.item(0).noisy)
    torch.testing.assert_close(dataset.batch(3, 2)["noisy"], other.batch(3, 2)["noisy"], rtol=0, atol=0)


def test_mixture_snr_matches_the_sampled_snr(dataset):
    checked = 0
    for i in range(40):
        ex = dataset.item(i)
        if ex.clean is None or not np.isfinite(ex.snr_db):
            continue
        measured = 10 * np.log10(power(ex.speech) / power(ex.noise))
        assert abs(measured - ex.snr_db) < 0.5, (i, measured, ex.snr_db)
        np.testing.assert_allclose(ex.noisy, ex.speech + ex.noise, atol=1e-5)
        checked += 1
    assert checked >= 20


def test_run_model_equals_the_training_form():
    torch.manual_seed(0)
    model = DfNet4.from_preset("dfnet4-lite").eval()
    d = model.dsp
    batch = {"spec": torch.randn(2, 1, 30, d.freq_bins, 2) * 0.01, "feat_erb": torch.randn(2, 1, 30, d.nb_erb),
             "feat_spec": torch.randn(2, 2, 30, d.nb_df)}
    with torch.no_grad():
        ours = run_model(model, batch)
        enhanced, mask, lsnr, _ = model(batch["spec"], batch["feat_erb"], batch["feat_spec"])
    torch.testing.assert_close(ours["enhanced"], enhanced)
    torch.testing.assert_close(ours["erb_mask"], mask)
    torch.testing.assert_close(ours["lsnr"], lsnr)


def test_torch_istft_matches_numpy_dsp():
    from dfnet4_sdk.training.data import spec_tensor

    from dfnet4_sdk import dsp

    d = DfNet4.from_preset("dfnet4-lite").dsp
    x = np.random.default_rng(0).standard_normal(4800).astype(np.float32)
    spec = dsp.stft(x, d)
    np.testing.assert_allclose(L.istft(spec_tensor(spec)[None], d)[0].numpy(), dsp.istft(spec, d), atol=1e-5)


def test_compressed_error_gradient_written_out_equals_autograd():
    """The hand-written backward of the spectral losses (training speed) against autograd through
    the same formula, in float64, with bins at zero (clamped) and below the clamp."""
    torch.manual_seed(0)
    est = torch.randn(3, 7, 11, 2, dtype=torch.float64) * 0.01
    est[0, 0, :4] = 0.0
    est[1, 1, 1] = 1e-7
    ref = torch.randn(3, 7, 11, 2, dtype=torch.float64) * 0.01
    for cw in (0.0, 0.5, 1.0):
        fast, plain = est.clone().requires_grad_(True), est.clone().requires_grad_(True)
        e_fast = L._compressed_error(fast, ref, 0.3, cw)
        e_plain = L._compressed_error(plain, ref.clone().requires_grad_(True), 0.3, cw)  # autograd path
        g = torch.rand_like(e_fast)
        (e_fast * g).sum().backward()
        (e_plain * g).sum().backward()
        torch.testing.assert_close(e_fast, e_plain, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(fast.grad, plain.grad, rtol=1e-10, atol=1e-12)
        assert fast.grad.abs().sum() > 0


def test_spectral_loss_is_zero_for_identical_and_weights_band_limit():
    ref = torch.randn(1, 1, 5, 481, 2)
    assert L.spectral_loss(ref, ref, 0.3, 0.5).item() == pytest.approx(0.0, abs=1e-9)
    freqs = L.stft_bins_hz(DfNet4.from_preset("dfnet4-lite").dsp)
    w = L.band_weight(torch.tensor([4000.0]), freqs, 0.1, torch.ones(1))
    assert w[0, 0, 0, 10].item() == 1.0 and w[0, 0, 0, 200].item() == pytest.approx(0.1)


@pytest.mark.parametrize("mode", ["train", "distill"])
def test_loss_decreases_on_a_fixed_batch(mode, tmp_path):
    from dfnet4_sdk.training.trainer import Trainer

    if mode == "distill":
        teacher_or_skip()
    torch.set_num_threads(1)
    trainer = Trainer(tiny_cfg(lr=3e-3, warmup_steps=1), tmp_path, mode=mode, device="cpu")
    trainer._make_optimizers()
    batch = trainer.data.batch(0, 2)
    losses = [trainer.train_step(batch)["loss"] for _ in range(6)]
    assert losses[-1] < losses[0], losses


def test_cli_train_and_distill_end_to_end_with_resume(tmp_path):
    from click.testing import CliRunner
    from dfnet4_sdk.training.cli import distill, train

    teacher_or_skip()
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(TINY.read_text().replace('"../shared/data"', json.dumps(str(DATA_ROOT))))
    runner = CliRunner()
    for command in (train, distill):
        out = tmp_path / command.name
        args = ["--config", str(cfg_path), "--out", str(out), "--device", "cpu"]
        first = runner.invoke(command, args + ["--steps", "2"])
        assert first.exit_code == 0, first.output
        assert json.loads(first.output.strip().splitlines()[-1])["step"] == 2
        second = runner.invoke(command, args + ["--steps", "4", "--resume"])
        assert second.exit_code == 0, second.output
        assert json.loads(second.output.strip().splitlines()[-1])["step"] == 4
        rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    from dfnet4_sdk.training.trainer import Callback, Trainer

    class StopAt(Callback):  # stands in for Ctrl-C / SIGTERM after step 2
        def on_step(self, trainer, step, terms):
            trainer._stop = step >= 2

    torch.set_num_threads(1)
    straight = Trainer(tiny_cfg(steps=4), tmp_path / "a", mode="train", device="cpu")
    straight.fit(resume=False)
    stopped = Trainer(tiny_cfg(steps=4), tmp_path / "b", mode="train", device="cpu", callbacks=[StopAt()]).fit(resume=False)
    assert stopped["step"] == 2
    resumed = Trainer(tiny_cfg(steps=4), tmp_path / "b", mode="train", device="cpu")
    result = resumed.fit(resume=True)
    assert result["step"] == 4
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_data_workers_prepare_the_same_batches_and_teacher_targets(tmp_path):
    """Batches and the teacher's targets made ahead in a worker process give the same run as the
    plain loop, and log.jsonl says where the time went."""
    from dfnet4_sdk.training.distill import teacher_targets
    from dfnet4_sdk.training.pipeline import BatchPipeline
    from dfnet4_sdk.training.trainer import Trainer

    teacher_or_skip()
    torch.set_num_threads(1)
    runs = {}
    for workers in (0, 1):
        trainer = Trainer(tiny_cfg(steps=3, data_workers=workers), tmp_path / str(workers), mode="distill", device="cpu")
        assert trainer.fit(resume=False)["step"] == 3
        runs[workers] = trainer.model.state_dict()
    for name, a in runs[0].items():
        torch.testing.assert_close(runs[1][name], a, rtol=1e-5, atol=1e-6, msg=name)
    pipeline = BatchPipeline(trainer.data, 2, 5, 6, trainer.teacher)  # what a worker computes
    made = pipeline[0]
    for k, v in teacher_targets(trainer.teacher, trainer.data.batch(5, 2)).items():
        torch.testing.assert_close(made["teacher"][k], v, rtol=0, atol=0, msg=k)
    row = json.loads((tmp_path / "1" / "log.jsonl").read_text().splitlines()[-1])
    phases = ("t_data", "t_teacher", "t_forward", "t_backward", "t_optimizer")
    assert all(row[k] >= 0 for k in phases) and sum(row[k] for k in phases) <= row["s_per_step"] * 1.05, row


def test_throughput_section_replaces_its_block_and_keeps_the_rest(tmp_path):
    from dfnet4_sdk.training.throughput import END, START, SETTINGS, write_section

    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# Benchmarks\n\ninference table\n")
    write_section(bench, f"{START}\n## Training\nfirst\n{END}\n")
    write_section(bench, f"{START}\n## Training\nsecond\n{END}\n")
    text = bench.read_text()
    assert text.startswith("# Benchmarks\n\ninference table\n\n")
    assert text.count(START) == 1 and text.count(END) == 1 and "second" in text and "first" not in text
    cfg = TrainConfig.load(REPO / "training" / "configs" / "dfnet4_lite_distill.toml")
    batch16 = next(s for s in SETTINGS if s.batch_size == 16).apply(cfg, steps=5).optim
    assert (batch16.batch_size, batch16.steps, batch16.valid_every) == (16, 5, 0)
    assert batch16.lr == pytest.approx(cfg.optim.lr * (16 / cfg.optim.batch_size) ** 0.5)
    assert SETTINGS[0].baseline_losses and (SETTINGS[0].num_threads, SETTINGS[0].data_workers, SETTINGS[0].batch_size) == (1, 0, 4)


def test_dnsmos_proxy_fit_reports_held_out_correlation_and_refuses_a_bad_one(tmp_path):
    from dfnet4_sdk.training.data import spec_tensor
    from dfnet4_sdk.training.dnsmos_proxy import DnsmosProxy, FitClip, fit_proxy

    from dfnet4_sdk import dsp

    # Stand-in scores (a known function of the noise level) so the fitting code is tested in
    # seconds; the shipped proxy is fitted to real DNSMOS (checked below when present).
    d = DfNet4.from_preset("dfnet4-lite").dsp
    rng = np.random.default_rng(0)
    clips = []
    t = np.arange(24000) / 48000
    for i in range(30):
        noise_db = rng.uniform(-40, 0)
        x = 0.1 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.1 * 10 ** (noise_db / 20) * rng.standard_normal(len(t))
        clips.append(FitClip(spec_tensor(dsp.stft(x.astype(np.float32), d)), 4.0 - 2.5 * (noise_db + 40) / 40, i, "x"))
    torch.manual_seed(0)
    proxy, report = fit_proxy(clips, d, epochs=40)
    assert {"pearson_test", "pearson_train", "clips_test", "rmse_test"} <= set(report)
    assert report["pearson_test"] > 0.7, report
    bad = proxy.save(tmp_path / "bad.pt", {**report, "pearson_test": 0.1})
    with pytest.raises(ModelImportError):
        DnsmosProxy.load(bad)
    shipped = REPO / "training" / "checkpoints" / "dnsmos_proxy.pt"
    if shipped.is_file():
        loaded = DnsmosProxy.load(shipped)
        assert loaded.report["pearson_test"] >= 0.7
        assert "DNSMOS" in loaded.report["target"]


def test_gan_and_speaker_terms_produce_finite_losses():
    from dfnet4_sdk.training.discriminators import Discriminators
    from dfnet4_sdk.training.speaker import SpectralSpeakerEmbedding

    torch.manual_seed(0)
    disc = Discriminators((2, 3), 2)
    real, fake = torch.randn(2, 4800), torch.randn(2, 4800, requires_grad=True)
    d_loss = disc.discriminator_loss(real, fake.detach())
    adv, fm = disc.generator_losses(fake, real, torch.tensor([True, True]))
    (adv + fm).backward()
    assert torch.isfinite(d_loss) and fake.grad is not None
    spk = SpectralSpeakerEmbedding(DfNet4.from_preset("dfnet4-lite").dsp)
    spec = torch.randn(2, 1, 20, 481, 2)
    assert spk.loss(spec, spec, torch.ones(2)).item() == pytest.approx(0.0, abs=1e-5)


def test_student_multires_stfts_are_made_once_for_both_terms_with_the_same_values_and_gradients(tmp_path, monkeypatch):
    """The supervised and the distillation multires terms share the student's STFTs (one per
    resolution per step, not one per term): the terms and the student's gradients equal
    ``multires_loss`` called on the waveforms for each term, as the objective did before (in
    float64: in float32 summing the two terms' gradients before or after the STFT's backward
    differs by rounding, 1e-5 relative on a few weights)."""
    from dfnet4_sdk.training.objective import Objective
    from dfnet4_sdk.training.trainer import Trainer

    torch.manual_seed(0)
    trainer = Trainer(tiny_cfg(), tmp_path, mode="train", device="cpu")
    batch = {k: v.double() if v.is_floating_point() else v for k, v in trainer.data.batch(0, 3).items()}
    assert batch["has_clean"].any()
    student, teacher = trainer.model.double(), DfNet4.from_preset("dfnet4-lite").double()
    c = dataclasses.replace(trainer.cfg.loss, multires_fft_sizes=(256, 512, 1024))
    with torch.no_grad():
        teacher_out = run_model(teacher, batch)
    objective = Objective(c, student)
    real_stft, calls = L._stft, []
    monkeypatch.setattr(L, "_stft", lambda x, n: calls.append(n) or real_stft(x, n))
    student.zero_grad()
    terms = objective.generator_terms(run_model(student, batch), batch, teacher_out)
    # one STFT per resolution for the student, the clean target and the teacher: 3, not 4
    assert len(calls) == 3 * len(c.multires_fft_sizes), calls
    (terms["multires"] + terms["d_multires"]).backward()
    grads = [p.grad.clone() for p in student.parameters() if p.grad is not None]

    student.zero_grad()
    out = run_model(student, batch)
    has_clean = batch["has_clean"].float()
    sr, ffts = student.dsp.sample_rate_hz, c.multires_fft_sizes
    sup = c.multires * L.multires_loss(
        out["wave"], L.istft(batch["clean_spec"], student.dsp), sr, ffts, c.gamma, c.complex_weight,
        batch["band_limit_hz"], c.band_limited_hf_weight, has_clean,
    )
    dis = c.distill_multires * L.multires_loss(out["wave"], teacher_out["wave"], sr, ffts, c.gamma, c.complex_weight)
    (sup + dis).backward()
    ref_grads = [p.grad.clone() for p in student.parameters() if p.grad is not None]
    assert sup.item() > 0 and dis.item() > 0
    torch.testing.assert_close(terms["multires"], sup, rtol=1e-6, atol=0)
    torch.testing.assert_close(terms["d_multires"], dis, rtol=1e-6, atol=0)
    assert len(grads) == len(ref_grads) > 10
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6 * r.abs().max().item())


@pytest.mark.parametrize("path", sorted((REPO / "training" / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_its_committed_init_weights_fit_its_preset(path):
    """A config a later session starts from must load, and weights it names inside the
    repository (training/resume/: what a new machine continues from) must exist and have the
    architecture of the config's preset, tensor for tensor."""
    from dfnet4_sdk.models import load_model

    cfg = TrainConfig.load(path)
    init = cfg.model.init_checkpoint
    if not init or init.startswith(("runs/", ".devdata/")):
        # no initial weights, or a file the command in the config's header makes (a run's own, or one
        # made on the GPU machine from committed weights: training/grow.py, models/dfn3_init.py)
        return
    weights = load_model(REPO / init)
    expected = DfNet4.from_preset(cfg.model.preset)
    shapes = {k: tuple(v.shape) for k, v in weights.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in expected.state_dict().items()}
