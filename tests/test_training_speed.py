"""Training speed-ups keep the objective: one fixed batch of the real distillation config gives
the same loss terms (1e-5 relative) and gradient norm after every optimisation of the step, and
what the speed-ups add (the teacher-target cache, the throughput settings) is exact.

The reference values were computed by the code before the speed-ups of issue 13 item 2 (commit
8669743: the losses of commit 746f7a0, the chunked Mamba scan with autograd through it) on this
batch: the real config's batch 0 at batch size 4 (mixtures of real speech and noise, 1.5 s), the
student as the trainer seeds it, the official DFN3 teacher, one torch thread."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from audio_data import DATA_DIR

from dfnet4_sdk.errors import ModelNotAvailableError
from dfnet4_sdk.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "training" / "configs" / "dfnet4_lite_distill.toml"
DATA_ROOT = DATA_DIR.resolve()  # conftest skips the tests that use it when a bare clone has no data

REFERENCE_TERMS = {
    "spectral": 2.398714780807495, "multires": 2.62555193901062, "mask": 0.01837490126490593,
    "lsnr": 0.13294801115989685, "d_spectral": 1.9029977321624756, "d_multires": 1.0611755847930908,
    "d_mask": 1.3798907995224, "d_lsnr": 0.26811766624450684, "d_df": 0.012026792392134666,
    "d_feature": 1.3829216957092285,
}
REFERENCE_LOSS = 11.182720184326172
REFERENCE_GRAD_NORM = 26.436529138017004  # over the student and the feature projector


def real_cfg(**optim) -> TrainConfig:
    cfg = TrainConfig.load(REAL)
    data = dataclasses.replace(cfg.data, data_root=str(DATA_ROOT), speech_screen=str(REPO / cfg.data.speech_screen))
    return dataclasses.replace(cfg, data=data, optim=dataclasses.replace(cfg.optim, valid_every=0, **optim))


def distill_trainer(tmp_path, **optim):
    from dfnet4_sdk.training.trainer import Trainer

    try:
        return Trainer(real_cfg(**optim), tmp_path, mode="distill", device="cpu")
    except ModelNotAvailableError as e:
        pytest.skip(f"DFN3 teacher not available ({e}); install the [dfn3] extra")



def assert_reference_step(trainer, terms, loss) -> None:
    """The fixed real batch's loss terms, total and gradient norm (after ``loss.backward()``)
    equal the reference code's: the objective every training speed-up must keep."""
    params = list(trainer.model.parameters()) + trainer.objective.generator_parameters()
    grad_norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None))
    assert set(terms) == set(REFERENCE_TERMS)
    for name, value in REFERENCE_TERMS.items():
        assert float(terms[name]) == pytest.approx(value, rel=1e-5), name
    assert float(loss) == pytest.approx(REFERENCE_LOSS, rel=1e-5)
    assert grad_norm == pytest.approx(REFERENCE_GRAD_NORM, rel=1e-4)

def test_loss_terms_and_gradient_of_a_fixed_batch_are_unchanged(tmp_path):
    from dfnet4_sdk.training.distill import run_model, teacher_targets

    torch.set_num_threads(1)
    trainer = distill_trainer(tmp_path)
    batch = trainer.data.batch(0, 4)
    assert batch["has_clean"].all() and batch["spec"].shape[2] == 150
    teacher_out = teacher_targets(trainer.teacher, batch)
    terms = trainer.objective.generator_terms(run_model(trainer.model, batch), batch, teacher_out)
    # the losses' targets made ahead (as a data worker does) give the very same terms; with
    # gradients on, as in training: without them the student's STFTs take torch.stft instead of
    # the written-out _Stft, equal only to float rounding (1 ulp of the multires terms was seen)
    ahead = trainer.objective.generator_terms(run_model(trainer.model, batch), batch, teacher_out,
                                              trainer.objective.targets(batch, teacher_out))
    assert {k: float(v) for k, v in ahead.items()} == {k: float(v) for k, v in terms.items()}
    loss = sum(terms.values())
    loss.backward()
    assert_reference_step(trainer, terms, loss)


@pytest.mark.parametrize("t, block", [(1, 1024), (5, 1024), (17, 1024), (152, 1024), (300, 128)])
def test_scan_training_form_gradients_equal_autograd_through_the_loop(t, block):
    """The scan with its gradient written out (training form): outputs and the gradients of every
    input, including the initial and final state, equal autograd through the per-frame loop
    (float64; t not a multiple of the chunk, and several blocks, included)."""
    import torch.nn.functional as F

    from dfnet4_sdk.models.mamba import selective_scan, selective_scan_reference

    g = torch.Generator().manual_seed(t)
    b, d, n = 2, 12, 4
    inputs = [torch.randn(b, t, d, generator=g), F.softplus(torch.randn(b, t, d, generator=g)),
              -torch.exp(torch.randn(d, n, generator=g)), torch.randn(b, t, n, generator=g),
              torch.randn(b, t, n, generator=g), torch.randn(d, generator=g), torch.randn(b, n, d, generator=g)]
    wy, wh = torch.randn(b, t, d, generator=g).double(), torch.randn(b, n, d, generator=g).double()
    results = []
    for scan in (selective_scan_reference, lambda *a: selective_scan(*a, block_frames=block)):
        leaves = [v.double().requires_grad_() for v in inputs]
        y, h = scan(*leaves)
        ((y * wy).sum() + (h * wh).sum()).backward()
        results.append([y.detach(), h.detach()] + [v.grad for v in leaves])
    names = ["y", "h_T", "dx", "d_dt", "dA", "dB", "dC", "dD", "dh0"]
    for name, ref, got in zip(names, *results):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9, msg=name)


def tiny_cfg(tmp_path, **data) -> TrainConfig:
    cfg = TrainConfig.load(REPO / "training" / "configs" / "tiny.toml")
    data = dataclasses.replace(cfg.data, data_root=str(DATA_ROOT), teacher_cache_dir=str(tmp_path / "cache"), **data)
    return dataclasses.replace(cfg, data=data, optim=dataclasses.replace(cfg.optim, steps=3))


def test_teacher_cache_trains_on_the_same_batches_and_targets_and_reads_them_back(tmp_path, monkeypatch):
    """A pool of K cached batches: the first epoch writes each batch and the teacher's outputs once
    (the run equals one without the cache), a second run only reads them (the teacher never runs)
    and ends with the same weights, and step K is batch 0 again."""
    from dfnet4_sdk.training import trainer as trainer_module
    from dfnet4_sdk.training.trainer import Trainer

    torch.set_num_threads(1)
    try:
        plain = Trainer(tiny_cfg(tmp_path), tmp_path / "plain", mode="distill", device="cpu")
    except ModelNotAvailableError as e:
        pytest.skip(f"DFN3 teacher not available ({e}); install the [dfn3] extra")
    plain.fit(resume=False)
    cached = Trainer(tiny_cfg(tmp_path, teacher_cache_batches=4), tmp_path / "first", mode="distill", device="cpu")
    cached.fit(resume=False)
    files = sorted((tmp_path / "cache").glob("*/batch_*.pt"))
    assert [f.name for f in files] == ["batch_000000.pt", "batch_000001.pt", "batch_000002.pt"]
    monkeypatch.setattr(trainer_module, "teacher_targets", lambda *a: pytest.fail("the teacher ran on a cached batch"))
    again = Trainer(tiny_cfg(tmp_path, teacher_cache_batches=4), tmp_path / "again", mode="distill", device="cpu")
    again.fit(resume=False)
    for name, a in plain.model.state_dict().items():
        torch.testing.assert_close(cached.model.state_dict()[name], a, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(again.model.state_dict()[name], a, rtol=0, atol=0, msg=name)
    from dfnet4_sdk.training.losses import istft
    from dfnet4_sdk.training.teacher_cache import TeacherCache

    cache = TeacherCache.for_run(again.cfg, 2, again.model.dsp, again.teacher, lambda s: istft(s, again.teacher.dsp))
    batch, teacher = cache.get(4, lambda j: pytest.fail(f"batch {j} was not read from the cache"))  # step 4 = batch 0
    fresh = plain.data.batch(0, 2)
    assert all(torch.equal(batch[k], fresh[k]) for k in fresh)
    assert set(teacher) == {"enhanced", "wave", "erb_mask", "lsnr", "df_coefs", "emb"}


@pytest.mark.parametrize("n_fft, samples", [(256, 72000), (512, 72000), (2048, 4801), (1024, 1100)])
def test_multires_stft_gradient_written_out_equals_autograd_through_torch_stft(n_fft, samples):
    """The student's multires STFT (gradient written out) has torch.stft's values and autograd's
    gradient, for lengths that are and are not whole hops (float64)."""
    from dfnet4_sdk.training import losses as L

    g = torch.Generator().manual_seed(n_fft)
    x = torch.randn(2, samples, generator=g, dtype=torch.float64)
    window = torch.hann_window(n_fft, dtype=torch.float64)
    ref_x, x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = torch.view_as_real(torch.stft(ref_x, n_fft, n_fft // 4, window=window, return_complex=True)).transpose(1, 2)
    got = L._stft(x, n_fft)
    assert got.grad_fn is not None and "Stft" in type(got.grad_fn).__name__
    weight = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (ref * weight).sum().backward()
    (got * weight).sum().backward()
    torch.testing.assert_close(got.detach(), ref.detach(), rtol=0, atol=0)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-10, atol=1e-10)


def test_two_data_parallel_processes_apply_the_mean_gradient_of_their_batches(tmp_path):
    """[optim] processes = 2: process r trains on batch 2 s + r, both apply the mean gradient, so
    the run equals one process that averages the two batches' gradients itself at every step."""
    from dfnet4_sdk.training.distill import run_model
    from dfnet4_sdk.training.trainer import Trainer

    torch.set_num_threads(1)
    cfg = tiny_cfg(tmp_path)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, steps=2, processes=2))
    parallel = Trainer(cfg, tmp_path / "dp", mode="train", device="cpu")
    assert parallel.fit(resume=False)["step"] == 2
    by_hand = Trainer(cfg, tmp_path / "hand", mode="train", device="cpu")
    by_hand._make_optimizers()
    params = [p for g in by_hand.optimizer.param_groups for p in g["params"]]
    for step in range(2):
        grads = []
        for r in range(2):
            batch = by_hand.data.batch(2 * step + r, cfg.optim.batch_size)
            by_hand.optimizer.zero_grad(set_to_none=True)
            sum(by_hand.objective.generator_terms(run_model(by_hand.model, batch), batch).values()).backward()
            grads.append([p.grad.clone() for p in params])
        for p, g0, g1 in zip(params, *grads):
            p.grad = (g0 + g1) / 2
        for group in by_hand.optimizer.param_groups:
            group["lr"] = by_hand.lr_at(step)
        torch.nn.utils.clip_grad_norm_(by_hand.model.parameters(), cfg.optim.grad_clip)
        by_hand.optimizer.step()
    for name, a in by_hand.model.state_dict().items():
        torch.testing.assert_close(parallel.model.state_dict()[name], a, rtol=1e-5, atol=1e-6, msg=name)


def test_objective_on_the_baseline_losses_module_gives_the_current_terms(tmp_path):
    """The throughput tool's `old` row hands one objective training/losses.py as of BASELINE_REV
    (no compress_target, multires_spectra or spectral_losses). The objective's feature checks must
    read that module, not the current one: after the per-objective change they read the global
    one, and the step called functions the old module lacks. Both modules give the same terms on
    the fixed real batch to float rounding (the old multires STFT path differs at ~2e-5)."""
    from dfnet4_sdk.training.distill import run_model, teacher_targets
    from dfnet4_sdk.training.throughput import BASELINE_REV, _losses_module

    torch.set_num_threads(1)
    trainer = distill_trainer(tmp_path)
    batch = trainer.data.batch(0, 4)
    teacher_out = teacher_targets(trainer.teacher, batch)
    with torch.no_grad():
        out = run_model(trainer.model, batch)
        current = trainer.objective.generator_terms(out, batch, teacher_out)
        trainer.objective.L = _losses_module(BASELINE_REV)
        assert trainer.objective.targets(batch, teacher_out) == {}  # the old module makes no targets ahead
        old = trainer.objective.generator_terms(out, batch, teacher_out)
    assert set(old) == set(current) and len(current) >= 5
    for name, value in current.items():
        assert float(old[name]) == pytest.approx(float(value), rel=1e-4), name
