"""``[optim] compile = true`` (training/compiled.py) keeps the objective: the fused forms of the
scan and of the compressed spectral errors have the eager forms' values and gradients (float64),
the compiled step on the real fixed batch gives test_training_speed's reference terms (1e-5
relative) and gradient norm (1e-4), and the trainer's switch trains the same run."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from test_training_speed import REAL, assert_reference_step, distill_trainer, tiny_cfg

from dfnet4_sdk.errors import ModelNotAvailableError
from dfnet4_sdk.training import compiled


@pytest.mark.parametrize("t", [1, 5, 17, 156])
def test_fused_scan_forms_equal_the_reference_scan_and_its_autograd_gradients(t):
    """scan_forward / scan_backward (the states recomputed from the chunk starts) against the
    per-frame loop and autograd through it, every input's gradient, t not a multiple of the chunk."""
    from dfnet4_sdk.models.mamba import selective_scan_reference
    from dfnet4_sdk.models.scan_training import chunk_frames

    g = torch.Generator().manual_seed(t)
    b, d, n = 2, 12, 4
    inputs = [torch.randn(b, t, d, generator=g), F.softplus(torch.randn(b, t, d, generator=g)),
              -torch.exp(torch.randn(d, n, generator=g)), torch.randn(b, t, n, generator=g),
              torch.randn(b, t, n, generator=g), torch.randn(d, generator=g), torch.randn(b, n, d, generator=g)]
    inputs = [v.double() for v in inputs]
    gy, gh = torch.randn(b, t, d, generator=g).double(), torch.randn(b, n, d, generator=g).double()
    leaves = [v.clone().requires_grad_() for v in inputs]
    y_ref, h_ref = selective_scan_reference(*leaves)
    ((y_ref * gy).sum() + (h_ref * gh).sum()).backward()
    L = chunk_frames(t)
    p = -(-t // L) * L
    fused_inputs = inputs[:2] + [inputs[2].t().contiguous()] + inputs[3:]  # A as [N, D]
    y, h, starts = compiled.scan_forward(*fused_inputs, t, L, p)
    grads = compiled.scan_backward(gy, gh, *fused_inputs, starts, t, L, p)
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(h, h_ref.detach(), rtol=1e-9, atol=1e-9)
    for name, got, leaf in zip(["dx", "d_dt", "dA", "dB", "dC", "dD", "dh0"], grads, leaves, strict=True):
        torch.testing.assert_close(got, leaf.grad, rtol=1e-9, atol=1e-9, msg=name)


def test_fused_spectral_errors_equal_autograd_through_the_compression():
    """errors_forward / errors_backward against two targets, with bins at zero (the clamp): the
    errors and the summed gradient of autograd through losses._compress (float64)."""
    from dfnet4_sdk.training import losses as L

    g = torch.Generator().manual_seed(3)
    est = torch.randn(2, 7, 33, 2, generator=g, dtype=torch.float64)
    est[0, 0, :5] = 0.0  # |x| clamped: no gradient through the magnitude there
    refs = [L.compress_target(torch.randn(2, 7, 33, 2, generator=g, dtype=torch.float64), 0.3) for _ in range(2)]
    weights = [torch.randn(2, 7, 33, generator=g, dtype=torch.float64) for _ in refs]
    leaf = est.clone().requires_grad_()
    mag_e, re_e, im_e = L._compress(leaf[..., 0], leaf[..., 1], 0.3)
    expected = [torch.lerp((mag_e - r.mag).square(), (re_e - r.re).square() + (im_e - r.im).square(), 0.5) for r in refs]
    sum((e * w).sum() for e, w in zip(expected, weights)).backward()
    targets = [t for r in refs for t in r]
    errs = compiled.errors_forward(est[..., 0], est[..., 1], 0.3, 0.5, targets)
    grad = compiled.errors_backward(est[..., 0], est[..., 1], 0.3, 0.5, targets, weights)
    for got, ref in zip(errs, expected, strict=True):
        torch.testing.assert_close(got, ref.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-9, atol=1e-12)


def test_compiled_target_compression_equals_the_losses_one():
    """The compiled compress_target (the step's targets under [optim] compile) against
    losses.compress_target on a spectrum [B, T, F, 2] with silent bins (|x| clamped to sqrt(EPS))."""
    from dfnet4_sdk.training import losses as L

    spec = torch.randn(2, 65, 40, 2, generator=torch.Generator().manual_seed(3))
    spec[:, :4] = 0.0
    spec[0, 10:12] *= 1e-9
    got, ref = compiled.compress_target(spec, 0.3), L.compress_target(spec, 0.3)
    for name, a, b in zip(ref._fields, got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7, msg=name)
    assert float(got.mag[:, :4].max()) == pytest.approx(L.EPS ** 0.15, rel=1e-5)


@pytest.mark.slow  # compiles 4 graphs x the step's shapes: ~1 min on one loaded core, seconds with torch's cache warm
def test_compiled_step_of_the_fixed_batch_keeps_the_reference_terms_and_gradient(tmp_path):
    from dfnet4_sdk.training.distill import run_model, teacher_targets

    torch.set_num_threads(1)
    trainer = distill_trainer(tmp_path)
    batch = trainer.data.batch(0, 4)
    teacher_out = teacher_targets(trainer.teacher, batch)
    targets = trainer.objective.targets(batch, teacher_out)  # made ahead, as a data worker does
    compiled._compiled.cache_clear()
    compiled.use_fused_kernels(trainer.model, trainer.objective)
    terms = trainer.objective.generator_terms(run_model(trainer.model, batch), batch, teacher_out, targets)
    loss = sum(terms.values())
    loss.backward()
    assert compiled._compiled.cache_info().currsize == 4  # both Functions ran compiled, forward and backward
    assert_reference_step(trainer, terms, loss)


def test_optim_compile_trains_the_same_step_through_the_fused_functions(tmp_path, monkeypatch):
    """Trainer with [optim] compile = true: the step runs the fused Functions (here uncompiled, so
    the test costs no compilation; the compiled bodies are the test above's) and its loss and
    gradient are those of the same step without it (the gradients, not the weights after Adam's
    first step, which amplifies rounding wherever a gradient is near 0 to a full lr step)."""
    from dfnet4_sdk.training.trainer import Trainer

    torch.set_num_threads(1)
    used = set()

    def eager(fn, strided_planes=False):
        return lambda *a: used.add(fn.__name__) or fn(*a)

    monkeypatch.setattr(compiled, "_compiled", eager)
    cfg = tiny_cfg(tmp_path)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, steps=1))
    runs = []
    for compile_ in (False, True):
        try:
            trainer = Trainer(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, compile=compile_)),
                              tmp_path / str(compile_), mode="distill", device="cpu")
        except ModelNotAvailableError as e:
            pytest.skip(f"DFN3 teacher not available ({e}); install the [dfn3] extra")
        runs.append((trainer.fit(resume=False)["history"][0], torch.cat([p.grad.flatten() for p in trainer.model.parameters()])))
        assert used == ({"scan_forward", "scan_backward", "errors_forward", "errors_backward", "compress_spectrum"} if compile_ else set())
    (plain, plain_grad), (fused, fused_grad) = runs
    for name in ("loss", "d_spectral", "d_multires", "spectral", "multires"):
        assert fused[name] == pytest.approx(plain[name], rel=1e-5), name
    assert float((fused_grad - plain_grad).norm() / plain_grad.norm()) < 1e-5


def test_compile_setting_of_the_throughput_table_is_the_two_process_row_plus_compile():
    from dfnet4_sdk.training.config import TrainConfig
    from dfnet4_sdk.training.throughput import SETTINGS

    cfg = TrainConfig.load(REAL)
    by_name = {s.name: s.apply(cfg, steps=8, cache_dir="c").optim for s in SETTINGS}
    assert by_name["+ compile"].compile and not any(o.compile for name, o in by_name.items() if name != "+ compile")
    assert dataclasses.replace(by_name["+ compile"], compile=False) == by_name["+ cache, 2 processes"]



def test_optim_compile_without_a_cpp_compiler_is_a_config_error_before_the_run(tmp_path, monkeypatch):
    from torch._inductor import config

    from dfnet4_sdk.errors import ConfigError
    from dfnet4_sdk.training.trainer import Trainer

    monkeypatch.setattr(config.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    cfg = tiny_cfg(tmp_path)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, compile=True))
    with pytest.raises(ConfigError, match=r"compile = true needs a C\+\+ compiler.*set \[optim\] compile = false"):
        Trainer(cfg, tmp_path / "run", mode="distill", device="cpu")


def test_fused_kernels_belong_to_one_model_and_objective(tmp_path):
    """The fused Functions are handed to one student and one objective, not swapped in globally:
    another model built in the same process still trains through the eager scan and losses."""
    from dfnet4_sdk.models.dfnet4 import DfNet4
    from dfnet4_sdk.models.mamba import MambaBlock
    from dfnet4_sdk.models.scan_training import SelectiveScan
    from dfnet4_sdk.training.config import LossConfig
    from dfnet4_sdk.training.objective import Objective

    student, other = DfNet4.from_preset("dfnet4-lite"), DfNet4.from_preset("dfnet4-lite")
    objective, other_objective = Objective(LossConfig(), student), Objective(LossConfig(), other)
    compiled.use_fused_kernels(student, objective)
    mixers = [m for m in student.modules() if isinstance(m, MambaBlock)]
    assert len(mixers) == 4 and all(m.train_scan is compiled.FusedSelectiveScan for m in mixers)
    assert objective.compressed_errors is compiled.FusedCompressedErrors
    assert objective.target_compressor is compiled.compress_target
    assert all(m.train_scan is SelectiveScan for m in other.modules() if isinstance(m, MambaBlock))
    assert other_objective.compressed_errors is None and other_objective.target_compressor is None


FORK_AFTER_COMPILE = """
import torch, torch.distributed as dist
from torch._inductor import config
from dfnet4_sdk.training.data_parallel import DataParallel
torch.set_num_threads(1)
config.compile_threads = 2  # the parent compiles on inductor's thread pool
torch.compile(lambda x: (x * 2 + 1).sin())(torch.randn(64))
dp = DataParallel(2)
rank = dp.start()
y = torch.compile(lambda x: (x * 3 - 1).cos(), dynamic=False)(torch.randn(40 + rank))
total = torch.tensor([float(y.numel())])
dist.all_reduce(total)
dp.finish()
print("elements", int(total.item()))
"""


def test_a_replica_forked_after_a_compile_compiles_new_shapes(tmp_path):
    """A replica forked by a process that had compiled (the throughput tool's second compile
    setting) inherited inductor's thread pool without its threads and waited forever on its
    first new compile. Fresh inductor cache, so the compiles really run (a cache hit skips the pool)."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    done = subprocess.run([sys.executable, "-c", FORK_AFTER_COMPILE], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["elements", "81"]  # 40 + 41: both processes ran their compiled graph
