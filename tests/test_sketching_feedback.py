"""Error feedback: FetchSGD's sketch-space state, and client-side EF / EF21 / EControl."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.round.harness import run_round
from simulator.sketching import COMPRESSORS
from simulator.sketching.fetchsgd import FetchSGD
from simulator.sketching.testing import flat_layout

D = 400
LAYOUT = flat_layout(D)


def _sparse(d: int, values: dict[int, float]) -> torch.Tensor:
    x = torch.zeros(d)
    for i, v in values.items():
        x[i] = v
    return x


# ---------------------------------------------------------------- FetchSGD


@pytest.mark.parametrize("error_reset", ["zero", "subtract"])
def test_fetchsgd_one_client_no_momentum_k_equals_d_applies_the_true_update(error_reset: str) -> None:
    # A sparse update (5 nonzeros) in a 5 × 400 table: a coordinate is misestimated only if ≥ 3 of its 5
    # buckets hold a nonzero (expected count over d = 400: ≈ 400·10·(5/400)³ ≈ 0.008), so every median
    # estimate is exact and k = d applies Δ itself. These tests check FetchSGD's bookkeeping, not the sketch's
    # compression.
    x = _sparse(D, {3: 1.5, 77: -2.0, 150: 0.5, 399: 3.0, 200: -0.25})
    comp = FetchSGD(rows=5, cols=400, k=D, momentum=0.0, error_reset=error_reset)
    _, applied = run_round(comp, x[None], layout=LAYOUT)
    torch.testing.assert_close(applied, x)
    assert comp.s_e is not None and float(comp.s_e.abs().max()) < 1e-6  # nothing left over


def test_fetchsgd_error_feedback_keeps_what_was_not_applied() -> None:
    # four heavy coordinates, k = 2: round 1 applies the two largest; the other two stay in S_e (paper's
    # subtraction: S_e = S(Δ − applied) exactly, by linearity) and come out in round 2 with a zero update.
    x = _sparse(D, {10: 4.0, 20: -3.0, 30: 2.0, 40: -1.0})
    for reset in ("subtract", "zero"):
        comp = FetchSGD(rows=5, cols=400, k=2, momentum=0.0, error_reset=reset)
        _, a1 = run_round(comp, x[None], layout=LAYOUT, server_round=1)
        torch.testing.assert_close(a1, _sparse(D, {10: 4.0, 20: -3.0}))
        op = comp.operator(seed=0, dim=D)
        if reset == "subtract":
            torch.testing.assert_close(comp.s_e, op.sketch(x - a1))
        _, a2 = run_round(comp, torch.zeros(1, D), layout=LAYOUT, server_round=2)
        torch.testing.assert_close(a1 + a2, x)
        # without error feedback the rest is lost: round 2 applies nothing
        off = FetchSGD(rows=5, cols=400, k=2, momentum=0.0, error_feedback=False)
        run_round(off, x[None], layout=LAYOUT, server_round=1)
        _, b2 = run_round(off, torch.zeros(1, D), layout=LAYOUT, server_round=2)
        assert float(b2.abs().max()) == 0.0


def test_fetchsgd_momentum_lives_in_sketch_space() -> None:
    # k = d, exact sketch, no error feedback: the applied update is the momentum Σ ρ^t Δ.
    x = _sparse(D, {5: 1.0, 300: -2.0})
    comp = FetchSGD(rows=5, cols=400, k=D, momentum=0.5, error_feedback=False)
    run_round(comp, x[None], layout=LAYOUT, server_round=1)
    _, a2 = run_round(comp, x[None], layout=LAYOUT, server_round=2)
    torch.testing.assert_close(a2, 1.5 * x)


def test_fetchsgd_averages_clients_by_weight_and_is_stateless_on_clients() -> None:
    x = torch.stack([_sparse(D, {1: 1.0}), _sparse(D, {1: 4.0})])
    comp = FetchSGD(rows=5, cols=400, k=1, momentum=0.0)
    states: dict = {}
    _, applied = run_round(comp, x, layout=LAYOUT, weights=torch.tensor([2.0, 1.0]), states=states)
    torch.testing.assert_close(applied, _sparse(D, {1: 2.0}))
    assert all(not s for s in states.values())
    assert comp.server_state_bytes() == 2 * 4 * 2000


# ---------------------------------------------------------------- client error feedback


def _run(name: str, params: dict, g: torch.Tensor, rounds: int, *, seed: int = 0) -> tuple[list, list, dict]:
    comp = COMPRESSORS.create(name, params)
    states: dict = {}
    msgs, decoded = [], []
    for t in range(1, rounds + 1):
        gt = g[t - 1] if g.dim() == 2 else g
        payloads, dec = run_round(comp, gt[None], layout=LAYOUT, server_round=t, states=states, seed=seed)
        p = payloads[0]
        m = torch.zeros(D)
        m.index_add_(0, torch.from_numpy(p["indices"].astype(np.int64)), torch.from_numpy(p["values"]))
        msgs.append(m)
        decoded.append(dec[0])
    return msgs, decoded, states[0]


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), inner=st.sampled_from(["topk", "randk"]))
def test_ef_sum_of_messages_plus_error_is_the_sum_of_updates(seed: int, inner: str) -> None:
    # Seide et al. / Karimireddy et al.: Σ_t m_t + e_T = Σ_t g_t exactly (up to float32 round-off).
    g = torch.randn(30, D, generator=torch.Generator().manual_seed(seed))
    msgs, decoded, state = _run("ef", {"k": 20, "inner": inner}, g, 30, seed=seed)
    e = torch.from_numpy(state["ef/error"])
    torch.testing.assert_close(torch.stack(msgs).sum(0) + e, g.sum(0), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(torch.stack(decoded), torch.stack(msgs))  # the server decodes the message
    # and the error stays bounded: for a contractive C with δ = k/d, ‖e‖ ≤ (√(1−δ)/(1−√(1−δ)))·max‖g‖ ≈
    # 39·max‖g‖ in the worst case; on random g it is far lower, and it must not grow like T.
    assert float(e.norm()) < 0.5 * float(g.sum(0).norm()) + 39 * float(g.norm(dim=1).max())


def test_ef_on_a_fixed_vector_transmits_it_on_average() -> None:
    g = torch.randn(D, generator=torch.Generator().manual_seed(1))
    # Σ_t m_t − T·g = −e_T and ‖e_T‖ ≤ √(1−δ)/(1−√(1−δ))·‖g‖ ≈ 39‖g‖ for top-k with δ = k/d = 0.05, so the
    # relative error is ≤ 39/T; it must also shrink (here ≈ 7.5/T to 9/T).
    errs = []
    for t in (20, 80, 320):
        msgs, _, _ = _run("ef", {"k": 20}, g, t)
        errs.append(float((torch.stack(msgs).sum(0) - t * g).norm()) / float((t * g).norm()))
        assert errs[-1] < 39 / t
    assert errs[2] < errs[0] / 8


@pytest.mark.parametrize(
    "name,params", [("ef21", {}), ("econtrol", {"eta": 0.05}), ("econtrol", {"eta": 0.0})]
)
def test_ef21_and_econtrol_estimates_converge_to_a_fixed_vector(name: str, params: dict) -> None:
    # For top-k (δ = k/d = 0.05), EF21's h_t satisfies ‖g − h_t‖ ≤ (1−δ)^{t/2}‖g‖; T = 150 gives ≤ 0.022‖g‖.
    g = torch.randn(D, generator=torch.Generator().manual_seed(2))
    msgs, decoded, state = _run(name, {"k": 20, **params}, g, 150)
    h = torch.from_numpy(state[f"{name}/h"])
    torch.testing.assert_close(torch.stack(msgs).sum(0), h, atol=1e-4, rtol=1e-4)  # h is the sum of messages
    torch.testing.assert_close(decoded[-1], h, atol=1e-4, rtol=1e-4)  # the server mirrors h
    bound = (1 - 20 / D) ** (150 / 2)
    assert float((g - h).norm()) <= bound * float(
        g.norm()
    )  # EControl's η-term must not break the EF21 rate here
    # the running sum of decoded estimates tracks the sum of true vectors
    rel = float((torch.stack(decoded).sum(0) - 150 * g).norm()) / float((150 * g).norm())
    assert rel < 0.2


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), inner=st.sampled_from(["topk", "randk"]))
def test_econtrol_with_eta_zero_is_ef21(seed: int, inner: str) -> None:
    # Gao, Islamov, Stich (ICLR 2024): η = 0 and h⁰ = C(g⁰) give EF21. Both start from h = 0, so the first
    # message is C(g⁰) in both and h¹ = C(g⁰); all later messages must coincide.
    g = torch.randn(12, D, generator=torch.Generator().manual_seed(seed))
    m_ef21, d_ef21, _ = _run("ef21", {"k": 20, "inner": inner}, g, 12, seed=seed)
    m_ec, d_ec, _ = _run("econtrol", {"k": 20, "inner": inner, "eta": 0.0}, g, 12, seed=seed)
    for a, b in zip(m_ef21, m_ec):
        assert torch.equal(a, b)
    for a, b in zip(d_ef21, d_ec):
        assert torch.equal(a, b)
    # with η > 0 they differ (the error term is fed back)
    m_eta, _, _ = _run("econtrol", {"k": 20, "inner": inner, "eta": 0.5}, g, 12, seed=seed)
    assert any(not torch.equal(a, b) for a, b in zip(m_ef21, m_eta))


def test_econtrol_error_is_the_accumulated_compression_residual() -> None:
    # e_{t+1} = e_t + g_t − h_t − Δ_t and h_{t+1} = h_t + Δ_t ⇒ e_T = Σ_t (g_t − h_{t+1}).
    g = torch.randn(10, D, generator=torch.Generator().manual_seed(4))
    msgs, _, state = _run("econtrol", {"k": 20, "eta": 0.2}, g, 10)
    hs = torch.cumsum(torch.stack(msgs), 0)
    expected = (g - hs).sum(0)
    torch.testing.assert_close(torch.from_numpy(state["econtrol/e"]), expected, atol=1e-3, rtol=1e-4)
    assert math.isfinite(float(expected.norm()))
