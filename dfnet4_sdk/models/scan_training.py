"""The selective scan's training form: ``mamba.selective_scan`` with its gradient written out.

Dimension letters as in mamba.py: B batch, T frames, D inner width, N SSM state size; here
also P = T padded to whole chunks of L frames (nc chunks).

Autograd through the chunked scan records every one of its ~3 sqrt(T) small steps and replays
each of them backwards, saving a [B, 1, nc, N, D] tensor per step: on CPU that was most of a
DfNet4Lite training step's backward. The recurrence is linear, so its gradient is one more
linear recurrence running backwards in time:

    forward   H_t = a_t H_{t-1} + u_t,          a_t = exp(dt_t A),  u_t = B_t (dt_t x_t)
              y_t = C_t . H_t + D x_t
    backward  G_t = a_{t+1} G_{t+1} + C_t gy_t   (G = dL/dH; G_T seeded with the final state's grad)
              dL/du_t = G_t,  dL/da_t = G_t H_{t-1}

``_scan`` runs both directions with the same two-level chunked scan as mamba.py (every factor a
decay in (0, 1], nothing divided); everything else is one vectorised operation over all frames.
The values equal ``selective_scan_reference`` to float rounding and the gradients equal autograd
through it (tests/test_mamba.py, float64).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def chunk_frames(t: int) -> int:
    """Frames per chunk L ~ sqrt(T): about 3 sqrt(T) sequential steps in all (as mamba.py)."""
    return min(64, max(4, math.ceil(math.sqrt(t))))


def _chunk_decay(dt: Tensor, A: Tensor, L: int) -> Tensor:
    """Each chunk's total decay exp(A * sum of its dt) in (0, 1]: dt [B, P, D] -> [B, nc, N, D]."""
    return torch.exp(dt.unflatten(1, (-1, L)).sum(2).unsqueeze(2) * A.t())


def _scan(a: Tensor, u: Tensor, total: Tensor, h0: Tensor, L: int, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """Every state of S_t = a_t S_{t-1} + u_t (``reverse``: S_t = a_t S_{t+1} + u_t) from S = h0
    before the first frame. a, u [B, P, N, D] (P a multiple of L; ``a`` may be a strided view),
    total [B, nc, N, D] the product of ``a`` over each chunk, h0 [B, N, D].
    Returns (S [B, P, N, D], the state after the last frame [B, N, D])."""
    b, p, n, d = u.shape
    nc = p // L
    av, uv = a.unflatten(1, (nc, L)), u.unflatten(1, (nc, L))  # [B, nc, L, N, D]
    steps = range(L - 1, -1, -1) if reverse else range(L)
    # Pass 1: each chunk's end state from a zero state, all chunks at once.
    end = uv[:, :, steps[0]]
    for l in steps[1:]:
        end = torch.addcmul(uv[:, :, l], av[:, :, l], end)
    # Carry the true state across chunk boundaries.
    starts = torch.empty_like(end)
    h = h0
    for c in range(nc - 1, -1, -1) if reverse else range(nc):
        starts[:, c] = h
        h = torch.addcmul(end[:, c], total[:, c], h)
    # Pass 2: every chunk from its true start, keeping every state.
    states = torch.empty_like(uv)
    prev = starts
    for l in steps:
        prev = torch.addcmul(uv[:, :, l], av[:, :, l], prev, out=states[:, :, l])
    return states.flatten(1, 2), h


class SelectiveScan(torch.autograd.Function):
    """(y [B, T, D], h_T [B, N, D]) = selective scan of x, dt [B, T, D], A [D, N], B, C [B, T, N],
    D [D] from h0 [B, N, D]; the same arguments and results as ``mamba.selective_scan_reference``."""

    @staticmethod
    def forward(ctx, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor):
        t = x.shape[1]
        L = chunk_frames(t)
        p = -(-t // L) * L
        pad = lambda v, frames: F.pad(v, (0, 0, 0, frames - t))  # zero frames: dt = 0 keeps the state
        dt_p = pad(dt, p + 1)  # one frame more: a_{t+1} for the backward recurrence, 1 past the end
        a = torch.exp(dt_p.unsqueeze(2) * A.t())  # [B, P + 1, N, D] in (0, 1]
        dtx = pad(dt * x, p)
        B_p, C_p = pad(B, p), pad(C, p)
        u = B_p.unsqueeze(3) * dtx.unsqueeze(2)  # [B, P, N, D]
        H, h_end = _scan(a[:, :p], u, _chunk_decay(dt_p[:, :p], A, L), h0, L)
        y = torch.matmul(C_p.unsqueeze(2), H).squeeze(2)[:, :t] + D * x  # [B, P, 1, N] @ [B, P, N, D]
        ctx.save_for_backward(x, dt_p, A, B_p, C_p, D, h0, a, dtx, H)
        ctx.frames, ctx.chunk = t, L
        return y, h_end

    @staticmethod
    def backward(ctx, gy: Tensor, gh: Tensor | None):
        x, dt_p, A, B_p, C_p, D, h0, a, dtx, H = ctx.saved_tensors
        t, L = ctx.frames, ctx.chunk
        p = H.shape[1]
        gy_p = F.pad(gy, (0, 0, 0, p - t))
        v = C_p.unsqueeze(3) * gy_p.unsqueeze(2)  # dL/dH_t from y_t: [B, P, N, D]
        seed = torch.zeros_like(h0) if gh is None else gh  # dL/dh_T
        G, g0 = _scan(a[:, 1:], v, _chunk_decay(dt_p[:, 1:], A, L), seed, L, reverse=True)  # g0 = G_0
        da = torch.empty_like(G)  # dL/da_t = G_t H_{t-1}, H_{-1} = h0
        torch.mul(G[:, 1:], H[:, :-1], out=da[:, 1:])
        torch.mul(G[:, 0], h0, out=da[:, 0])
        q = da.mul_(a[:, :p])  # dL/d(dt_t A) = dL/da_t a_t
        dtp = dt_p[:, :p]
        d_dt = (q * A.t()).sum(2)  # [B, P, D]
        dA = q.mul_(dtp.unsqueeze(2)).sum((0, 1)).t()  # (an einsum here copied q in 624-element pieces)
        d_dtx = torch.matmul(B_p.unsqueeze(2), G).squeeze(2)  # [B, P, 1, N] @ [B, P, N, D]
        # sums over D as multiply-and-sum: as a matmul these are P x B matrix-vector products of
        # N x D, about 3x slower on CPU
        dB = (G * dtx.unsqueeze(2)).sum(3)  # [B, P, N]
        dC = (H * gy_p.unsqueeze(2)).sum(3)
        d_dt = (d_dt + d_dtx * F.pad(x, (0, 0, 0, p - t)))[:, :t]
        dx = d_dtx[:, :t] * dtp[:, :t] + D * gy
        dD = (gy * x).sum((0, 1))
        return dx, d_dt, dA, dB[:, :t], dC[:, :t], dD, a[:, 0] * g0  # H_0 = a_0 h0 + u_0
