"""``[optim] compile = true``: the training step's elementwise chains fused by ``torch.compile``.

    use_fused_kernels(student, objective)   # the Trainer does it once when compile is on
    out = run_model(student, batch)
    loss = sum(objective.generator_terms(out, batch, teacher_out, targets).values())
    loss.backward()

A profile of the CPU step (DfNet4Lite, batch 4 x 1.5 s) put half its time in two hand-written
autograd Functions made of elementwise passes over large buffers: the Mamba scan of
``models/scan_training.py`` ([B, T, N, D] = [4, 156, 8, 256]) and the compressed spectral error of
``losses.py`` (every spectrum of the step). Whole-step ``torch.compile`` stops at ~40 graph
breaks (data-dependent branches of the objective, numpy in the DSP tables, ``out=`` writes), so
only these two Functions' bodies are compiled, as pure tensor functions (inductor, C++ on CPU,
Triton on CUDA: the same code path). Written for a fuser rather than for eager torch:

- the scan keeps no [B, P, N, D] buffer between forward and backward: the forward saves its
  inputs and each chunk's start state [B, nc, N, D]; the backward recomputes the decays and the
  states chunk by chunk inside the same fused kernels that use them (eager, that recomputation
  would cost a pass; fused, it saves the memory traffic of three buffers);
- the two chunked passes are plain chains of ``addcmul`` (no ``out=`` into a strided view),
  which inductor turns into one loop per element.

The recurrences and gradients are those of ``scan_training.py`` and ``losses._CompressedErrors``
(derivations there); the values agree with them to float rounding (tests/test_training_compile.py
checks the formulas in float64 and the compiled step on a real batch against the reference terms).

``use_fused_kernels`` hands the fused Functions to one student's Mamba mixers (their
``train_scan``) and one objective (its ``compressed_errors``); nothing global changes but dynamo's
recompile limit, raised for the process. Inference and export never use them.
Compiled code is cached by torch under its temp folder (``TORCHINDUCTOR_CACHE_DIR``, default
``/tmp/torchinductor_<user>``); nothing in the package or the runtime needs it. The first step of
a run pays the compilation (tens of seconds on one core, a few with a warm cache).
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F
from torch import Tensor

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.models import mamba
from dfnet4_sdk.models.scan_training import _chunk_decay, chunk_frames
from dfnet4_sdk.training import losses

# one compiled graph per (function, shapes): Mamba layers of several widths, five spectrum
# resolutions, one or two targets, forward and backward: more than dynamo's default of 8
RECOMPILE_LIMIT = 64


# -- the scan (dimension letters as in scan_training.py) -------------------------------------------


def _inputs(x: Tensor, dt: Tensor, A_nd: Tensor, B: Tensor, t: int, p: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dt padded to P + 1 frames, a = exp(dt A) [B, P + 1, N, D], dt x [B, P, D], u = B (dt x) [B, P, N, D])."""
    dt_p = F.pad(dt, (0, 0, 0, p + 1 - t))  # zero frames keep the state; one more: a_{t+1} for the backward
    dtx = F.pad(dt * x, (0, 0, 0, p - t))
    return dt_p, torch.exp(dt_p.unsqueeze(2) * A_nd), dtx, F.pad(B, (0, 0, 0, p - t)).unsqueeze(3) * dtx.unsqueeze(2)


def _starts(a: Tensor, u: Tensor, total: Tensor, h0: Tensor, L: int, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """Each chunk's start state [B, nc, N, D] of S_t = a_t S_{t-1} + u_t (``reverse``: S_{t+1})
    from h0, and the state after the last frame; a, u [B, P, N, D], total [B, nc, N, D]."""
    nc = u.shape[1] // L
    av, uv = a.unflatten(1, (nc, L)), u.unflatten(1, (nc, L))
    steps = range(L - 1, -1, -1) if reverse else range(L)
    end = uv[:, :, steps[0]]
    for l in steps[1:]:  # each chunk's end state from zero
        end = torch.addcmul(uv[:, :, l], av[:, :, l], end)
    starts, h = [None] * nc, h0
    for c in range(nc - 1, -1, -1) if reverse else range(nc):
        starts[c] = h
        h = torch.addcmul(end[:, c], total[:, c], h)
    return torch.stack(starts, 1), h


def _states(a: Tensor, u: Tensor, starts: Tensor, L: int, reverse: bool = False) -> Tensor:
    """Every state [B, P, N, D] from each chunk's start state."""
    nc = u.shape[1] // L
    av, uv = a.unflatten(1, (nc, L)), u.unflatten(1, (nc, L))
    states, prev = [None] * L, starts
    for l in range(L - 1, -1, -1) if reverse else range(L):
        prev = torch.addcmul(uv[:, :, l], av[:, :, l], prev)
        states[l] = prev
    return torch.stack(states, 2).flatten(1, 2)


def scan_forward(x, dt, A_nd, B, C, D, h0, t: int, L: int, p: int) -> tuple[Tensor, Tensor, Tensor]:
    """(y [B, T, D], h_T [B, N, D], chunk start states [B, nc, N, D]) of the selective scan;
    ``A_nd``: A [D, N] as a contiguous [N, D], so every [B, P, N, D] buffer is laid out D-fastest
    (from A's own strides inductor laid them out N-fastest: 16-lane vectors over N = 8, half
    empty, in every pass of the scan)."""
    dt_p, a, _, u = _inputs(x, dt, A_nd, B, t, p)
    starts, h_end = _starts(a[:, :p], u, _chunk_decay(dt_p[:, :p], A_nd.t(), L), h0, L)
    H = _states(a[:, :p], u, starts, L)
    y = (F.pad(C, (0, 0, 0, p - t)).unsqueeze(3) * H).sum(2)[:, :t] + D * x
    return y, h_end, starts


def scan_backward(gy, gh, x, dt, A_nd, B, C, D, h0, starts, t: int, L: int, p: int) -> tuple[Tensor, ...]:
    """The gradients of (x, dt, A [D, N], B, C, D, h0) given those of y and h_T (scan_training.py's
    backward recurrence G_t = a_{t+1} G_{t+1} + C_t gy_t), the states recomputed from ``starts``;
    ``A_nd`` as in ``scan_forward``."""
    dt_p, a, dtx, u = _inputs(x, dt, A_nd, B, t, p)
    H = _states(a[:, :p], u, starts, L)
    pad = lambda v: F.pad(v, (0, 0, 0, p - t))
    gy_p = pad(gy)
    v = pad(C).unsqueeze(3) * gy_p.unsqueeze(2)  # dL/dH_t from y_t
    g_starts, g0 = _starts(a[:, 1:], v, _chunk_decay(dt_p[:, 1:], A_nd.t(), L), gh, L, reverse=True)
    G = _states(a[:, 1:], v, g_starts, L, reverse=True)
    q = G * torch.cat([h0.unsqueeze(1), H[:, :-1]], 1) * a[:, :p]  # dL/d(dt_t A) = G_t H_{t-1} a_t
    d_dtx = (pad(B).unsqueeze(3) * G).sum(2)
    d_dt = ((q * A_nd).sum(2) + d_dtx * pad(x))[:, :t]
    dA = (q * dt_p[:, :p].unsqueeze(2)).sum((0, 1)).t()
    dB = (G * dtx.unsqueeze(2)).sum(3)[:, :t]
    dC = (H * gy_p.unsqueeze(2)).sum(3)[:, :t]
    dx = d_dtx[:, :t] * dt + D * gy
    return dx, d_dt, dA, dB, dC, (gy * x).sum((0, 1)), a[:, 0] * g0  # H_0 = a_0 h0 + u_0


class FusedSelectiveScan(torch.autograd.Function):
    """``scan_training.SelectiveScan`` (same arguments and results) with compiled bodies."""

    @staticmethod
    def forward(ctx, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor):
        t = x.shape[1]
        L = chunk_frames(t)
        p = -(-t // L) * L
        A_nd = A.t().contiguous()
        y, h_end, starts = _compiled(scan_forward)(x, dt, A_nd, B, C, D, h0, t, L, p)
        ctx.save_for_backward(x, dt, A_nd, B, C, D, h0, starts)
        ctx.sizes = (t, L, p)
        return y, h_end

    @staticmethod
    def backward(ctx, gy: Tensor, gh: Tensor | None):
        saved = ctx.saved_tensors
        gh = torch.zeros_like(saved[6]) if gh is None else gh
        return _compiled(scan_backward)(gy.contiguous(), gh, *saved, *ctx.sizes)


# -- the compressed spectral error (formulas in losses._CompressedErrors) --------------------------


def _compress(re: Tensor, im: Tensor, gamma: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(m2 = max(|x|^2, EPS), |x|^2 < EPS, mc = m2^(g/2), s = mc / sqrt(m2)). The powers are
    exp(c log m2): in inductor's vectorised C++, one log and two exps took 0.6x the time of a pow
    and a rsqrt (the same values to float rounding)."""
    m2 = torch.addcmul(re * re, im, im)
    clamped = m2 < losses.EPS
    m2 = m2.clamp_min(losses.EPS)
    log_m2 = torch.log(m2)
    return m2, clamped, torch.exp((0.5 * gamma) * log_m2), torch.exp((0.5 * gamma - 0.5) * log_m2)


def _target_errors(re: Tensor, im: Tensor, mc: Tensor, s: Tensor, targets: list[Tensor]):
    """(dm, er, ei) of the estimate against each (mag, re, im) target."""
    for mag_r, re_r, im_r in zip(targets[0::3], targets[1::3], targets[2::3], strict=True):
        yield mc - mag_r, torch.addcmul(-re_r, re, s), torch.addcmul(-im_r, im, s)


def errors_forward(re: Tensor, im: Tensor, gamma: float, cw: float, targets: list[Tensor]) -> list[Tensor]:
    """The error against each (mag, re, im) target."""
    _, _, mc, s = _compress(re, im, gamma)
    return [torch.lerp(dm.square(), torch.addcmul(er * er, ei, ei), cw) for dm, er, ei in _target_errors(re, im, mc, s, targets)]


def errors_backward(re: Tensor, im: Tensor, g: float, c: float, targets: list[Tensor], grads: list[Tensor]) -> Tensor:
    """The gradient [..., 2] of the estimate: the sum over targets of each error's. The
    compression and the differences are recomputed here, in the kernel that uses them, rather
    than saved by the forward: ten planes written and read back cost more than the recomputation
    (the backward's inputs are the estimate, the targets and the errors' gradients)."""
    m2, clamped, mc, s = _compress(re, im, g)
    k = er_sum = ei_sum = 0.0
    for grad, (dm, er, ei) in zip(grads, _target_errors(re, im, mc, s, targets), strict=True):
        kj = torch.addcmul(er * re, ei, im) * s * (2 * c * (g - 1)) + dm * mc * (2 * (1 - c) * g)
        k, er_sum, ei_sum = k + kj * grad, er_sum + er * grad, ei_sum + ei * grad
    k = (k / m2).masked_fill(clamped, 0.0)
    s2 = s * (2 * c)
    return torch.stack([er_sum * s2 + re * k, ei_sum * s2 + im * k], -1)


def compress_spectrum(spec: Tensor, gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """``losses.compress_target``'s (|x|^g, re and im of x / |x| * |x|^g) of a spectrum [..., 2]."""
    re, im = spec[..., 0], spec[..., 1]
    _, _, mc, s = _compress(re, im, gamma)
    return mc, re * s, im * s


@torch.no_grad()
def compress_target(ref: Tensor, gamma: float) -> losses.Compressed:
    """``losses.compress_target`` in one fused pass: the targets of a step (the clean and the
    teacher's spectrum at the model's and every multires resolution) were a fifth of a CPU step
    without a data worker, most of it in the eager pow and products over the largest tensors."""
    return losses.Compressed(*_compiled(compress_spectrum, strided_planes=True)(ref, gamma))


class FusedCompressedErrors(torch.autograd.Function):
    """``losses._CompressedErrors`` (same arguments and results) with compiled bodies; saves only
    its inputs (``errors_backward`` recomputes the rest)."""

    @staticmethod
    def forward(ctx, est: Tensor, gamma: float, cw: float, *targets: Tensor):
        errs = _compiled(errors_forward, strided_planes=True)(est[..., 0], est[..., 1], gamma, cw, list(targets))
        ctx.save_for_backward(est, *targets)
        ctx.gamma, ctx.cw = gamma, cw
        return tuple(errs)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        est, *targets = ctx.saved_tensors
        grads = [torch.zeros_like(targets[0]) if g is None else g for g in grads]
        grad_est = _compiled(errors_backward, strided_planes=True)(est[..., 0], est[..., 1], ctx.gamma, ctx.cw, targets, grads)
        return (grad_est, None, None) + (None,) * len(targets)


def after_fork(worker_id: int | None = None) -> None:
    """In a forked process (a data-parallel replica, a data worker: ``worker_id``): drop torch
    inductor's compile thread pool inherited from the parent.

    A fork copies the pool object but not its threads, so the child's first compile of a new
    shape would wait forever on a future no thread runs (the parent had compiled before forking,
    e.g. an earlier setting of the throughput tool). torch resets its process pool at fork but
    not this one (torch 2.13); the child makes a fresh pool when it needs one."""
    async_compile = sys.modules.get("torch._inductor.async_compile")
    if async_compile is not None:
        async_compile.AsyncCompile.pool.cache_clear()


def require_compiler(device: torch.device) -> None:
    """Raises ConfigError when torch.compile cannot build code for ``device`` (on CPU: no C++
    compiler), before a run starts rather than at its first step."""
    if device.type != "cpu":
        return  # CUDA: Triton ships with torch's CUDA wheels
    from torch._inductor import config, cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except RuntimeError as e:
        raise ConfigError(
            f"[optim] compile = true needs a C++ compiler for torch.compile on CPU; found none ({e}, "
            f"tried {config.cpp.cxx}). Install g++ (or point $CXX at one) or set [optim] compile = false"
        ) from e


# Inductor's C++ backend leaves a loop scalar when over 12% of its loads are strided (its tiling
# heuristic). The spectral functions read the interleaved re / im planes of a spectrum: scalar,
# the targets' compression took 2.2x the time of its vectorised form. The scan's kernels are
# vectorised with the heuristic on, and timed alone ran the same without it, so it stays on
# there. Triton (CUDA) ignores the option.
_STRIDED_PLANES = {"cpp.enable_tiling_heuristics": False}


@functools.cache
def _compiled(fn, strided_planes: bool = False):
    return torch.compile(fn, dynamic=False, options=_STRIDED_PLANES if strided_planes else None)


def use_fused_kernels(student: torch.nn.Module, objective) -> None:
    """``student``'s Mamba scans and ``objective``'s compressed spectral errors train through the
    compiled Functions above (their forward and backward), and its targets are compressed by the
    compiled ``compress_target``."""
    import torch._dynamo.config

    mamba.use_train_scan(student, FusedSelectiveScan)
    objective.compressed_errors = FusedCompressedErrors
    objective.target_compressor = compress_target
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
