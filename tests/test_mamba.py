"""Mamba: the plain loop reference, the fast sequence form and the step form agree; the
discretisation is numerically safe; states are explicit and named."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dfnet4_sdk.models.mamba import (
    BidirectionalMamba,
    Mamba,
    MambaBlock,
    SqueezedMamba,
    selective_scan,
    selective_scan_reference,
)

TOL = 1e-5  # fp32, relative to the output scale


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Per-frame graphs are tiny: one intra-op thread avoids spin-wait stalls on busy CI cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _scan_inputs(b=2, t=300, d=24, n=8, seed=0, dt_scale=1.0, a_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d, generator=g)
    dt = F.softplus(torch.randn(b, t, d, generator=g)) * dt_scale
    A = -torch.exp(torch.randn(d, n, generator=g)) * a_scale
    B = torch.randn(b, t, n, generator=g)
    C = torch.randn(b, t, n, generator=g)
    D = torch.randn(d, generator=g)
    h0 = torch.randn(b, n, d, generator=g)  # [B, N, D]
    return x, dt, A, B, C, D, h0


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1.0))


@pytest.mark.parametrize("t", [1, 2, 5, 17, 300, 1000])
def test_fast_scan_matches_loop_reference(t):
    x, dt, A, B, C, D, h0 = _scan_inputs(t=t)
    y_ref, h_ref = selective_scan_reference(x, dt, A, B, C, D, h0)
    y, h = selective_scan(x, dt, A, B, C, D, h0, block_frames=256)  # 1000 frames: 4 blocks
    assert _rel_err(y, y_ref) <= TOL
    assert _rel_err(h, h_ref) <= TOL


def test_scan_is_safe_with_extreme_decays():
    # dt * A down to -1e5: exp underflows to 0 (a full reset) and must never overflow.
    x, dt, A, B, C, D, h0 = _scan_inputs(t=257, dt_scale=100.0, a_scale=300.0)
    y_ref, _ = selective_scan_reference(x, dt, A, B, C, D, h0)
    y, h = selective_scan(x, dt, A, B, C, D, h0)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    assert _rel_err(y, y_ref) <= TOL
    # Tiny decays over long spans (cumulative sums of dt*A near -1e4) stay finite as well.
    x, dt, A, B, C, D, h0 = _scan_inputs(t=2000, dt_scale=1e-3, a_scale=1.0)
    y, _ = selective_scan(x, dt, A, B, C, D, h0)
    assert torch.isfinite(y).all()


def test_scan_state_carries_across_calls():
    x, dt, A, B, C, D, h0 = _scan_inputs(t=300)
    y_full, h_full = selective_scan(x, dt, A, B, C, D, h0)
    y1, h1 = selective_scan(x[:, :123], dt[:, :123], A, B[:, :123], C[:, :123], D, h0)
    y2, h2 = selective_scan(x[:, 123:], dt[:, 123:], A, B[:, 123:], C[:, 123:], D, h1)
    assert _rel_err(torch.cat([y1, y2], 1), y_full) <= TOL
    assert _rel_err(h2, h_full) <= TOL


def _block(seed=0, **kw) -> MambaBlock:
    torch.manual_seed(seed)
    return MambaBlock(**{"d_model": 32, "d_state": 8, "d_conv": 4, "expand": 2, **kw}).eval()


@torch.no_grad()
def test_block_sequence_step_and_reference_agree():
    m = _block()
    x = torch.randn(2, 300, 32)
    conv0 = torch.randn(2, 3, m.d_inner) * 0.5
    ssm0 = torch.randn(2, m.d_state, m.d_inner) * 0.5
    y_seq, conv_seq, ssm_seq = m(x, conv0, ssm0)
    # Step form, frame by frame with explicit state.
    conv, ssm, ys = conv0, ssm0, []
    for t in range(x.shape[1]):
        y, conv, ssm = m.step(x[:, t], conv, ssm)
        ys.append(y)
    assert _rel_err(torch.stack(ys, 1), y_seq) <= TOL
    assert _rel_err(conv, conv_seq) <= TOL and _rel_err(ssm, ssm_seq) <= TOL
    # Plain loop reference of the whole block (conv by explicit window sums, scan by loop).
    xi, z = m.in_proj(x).split(m.d_inner, dim=-1)
    xcat = torch.cat([conv0, xi], 1)
    w = m.conv1d.weight[:, 0, :]  # [D, K]
    xc = torch.stack([(xcat[:, t : t + m.d_conv] * w.t()).sum(1) for t in range(x.shape[1])], 1) + m.conv1d.bias
    xc, dt, b, c = m._ssm_inputs(xc)
    y_ref, _ = selective_scan_reference(xc, dt, -torch.exp(m.A_log), b, c, m.D, ssm0)
    assert _rel_err(m.out_proj(y_ref * F.silu(z)), y_seq) <= TOL


@torch.no_grad()
def test_discretisation_is_bounded():
    m = _block()
    with torch.no_grad():
        m.dt_proj.bias.fill_(80.0)  # softplus must not overflow (torch's softplus is linear above 20)
        m.A_log.fill_(10.0)  # A = -exp(10)
    x = torch.randn(1, 50, 32) * 10
    y, _, ssm = m(x)
    assert torch.isfinite(y).all() and torch.isfinite(ssm).all()
    A = -torch.exp(m.A_log)
    assert (A < 0).all()


def test_gradients_reach_every_parameter():
    m = _block().train()
    x = torch.randn(2, 40, 32, requires_grad=True)
    y, _, _ = m(x)
    y.pow(2).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


@torch.no_grad()
def test_squeezed_mamba_names_its_states_and_steps_exactly():
    torch.manual_seed(0)
    sm = SqueezedMamba("enc", 48, 32, 48, num_layers=2, groups=4, d_state=8, d_conv=3).eval()
    names = [s.name for s in sm.state_specs()]
    assert names == ["enc_mamba0_conv", "enc_mamba0_ssm", "enc_mamba1_conv", "enc_mamba1_ssm"]
    state = {s.name: s.initial_tensor(2) for s in sm.state_specs()}
    assert state["enc_mamba0_conv"].shape == (2, 2, 64) and state["enc_mamba0_ssm"].shape == (2, 8, 64)
    x = torch.randn(2, 300, 48)
    y_seq, st_seq = sm(x, state)
    st, ys = state, []
    for t in range(x.shape[1]):
        y, st = sm.step(x[:, t], st)
        ys.append(y)
    assert _rel_err(torch.stack(ys, 1), y_seq) <= TOL
    for k in st:
        assert _rel_err(st[k], st_seq[k]) <= TOL


@torch.no_grad()
def test_mamba_layer_is_causal():
    torch.manual_seed(0)
    layer = Mamba(32, 8, 4, 2).eval()
    x = torch.randn(1, 80, 32)
    x2 = x.clone()
    x2[:, 50:] += torch.randn(1, 30, 32)
    y, y2 = layer(x)[0], layer(x2)[0]
    assert (y[:, :50] - y2[:, :50]).abs().max() == 0
    assert (y[:, 50:] - y2[:, 50:]).abs().max() > 0


@torch.no_grad()
def test_bidirectional_mamba_is_offline_only():
    torch.manual_seed(0)
    bi = BidirectionalMamba(16, 4, 4, 2).eval()
    x = torch.randn(1, 30, 16)
    x2 = x.clone()
    x2[:, 20:] += torch.randn(1, 10, 16)
    assert (bi(x)[:, :20] - bi(x2)[:, :20]).abs().max() > 1e-4  # sees the future, by design
    assert bi.streamable is False
    with pytest.raises(NotImplementedError):
        bi.step(x[:, 0])


def test_step_form_uses_only_export_friendly_ops():
    m = _block()
    args = (torch.randn(1, 32), torch.zeros(1, 3, m.d_inner), torch.zeros(1, *m.ssm_state_shape[1:]))

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x, c, s):
            return self.m.step(x, c, s)

    graph = torch.jit.trace(Step(), args).inlined_graph
    kinds = {n.kind() for n in graph.nodes()}
    banned = [k for k in kinds if any(b in k for b in ("einsum", "cumsum", "cumprod", "chunk", "gru_cell", "Loop"))]
    assert not banned, banned
