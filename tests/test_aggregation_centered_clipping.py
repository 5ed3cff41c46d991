"""Centered Clipping (Karimireddy et al., ICML 2021) against a per-row loop and closed forms.
Tolerances are stated per test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from defenses.aggregation.centered_clipping import CenteredClipping, centered_clip
from defenses.base import AGGREGATORS
from simulator.registry import BadParams
from tests.helpers.round_context import make_ctx


def cc_brute_force(u: np.ndarray, v0: np.ndarray, tau: float, iterations: int) -> np.ndarray:
    """The paper's update with a Python loop over the rows (float64)."""
    v = v0.copy()
    for _ in range(iterations):
        step = np.zeros_like(v)
        for x in u:
            diff = x - v
            norm = float(np.sqrt((diff**2).sum()))
            step += diff * (min(1.0, tau / norm) if norm > 0 else 1.0)
        v = v + step / len(u)
    return v


@pytest.mark.parametrize(("tau", "iterations"), [(0.5, 1), (2.0, 3), (0.05, 10), (100.0, 2)])
def test_brute_force_two_rounds_with_previous_start(tau: float, iterations: int) -> None:
    g = torch.Generator().manual_seed(int(tau * 100) + iterations)
    n, d = 9, 40
    agg = CenteredClipping(tau=tau, iterations=iterations, start="previous")
    v = np.zeros(d)
    for rnd in (1, 2, 3):
        u = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g).mul(3)
        u[0] += 20.0  # one far update, clipped whenever tau < ~100
        res = agg.aggregate(u, torch.ones(n), make_ctx(n, d, server_round=rnd))
        v = cc_brute_force(u.double().numpy(), v, tau, iterations)
        # float32 output of a float64 iteration: 1e-6 relative
        np.testing.assert_allclose(res.update.double().numpy(), v, rtol=1e-6, atol=1e-6)
        assert res.accepted == tuple(range(n))
        dist = np.sqrt(((u.double().numpy() - v) ** 2).sum(axis=1))
        np.testing.assert_allclose([res.scores[i] for i in range(n)], dist, rtol=1e-9, atol=1e-9)


def test_zero_start_ignores_the_previous_round() -> None:
    g = torch.Generator().manual_seed(5)
    u1, u2 = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    agg = CenteredClipping(tau=0.3, iterations=2, start="zero")
    agg.aggregate(u1, torch.ones(6), make_ctx(6, 10))
    res = agg.aggregate(u2, torch.ones(6), make_ctx(6, 10, server_round=2))
    expected = cc_brute_force(u2.double().numpy(), np.zeros(10), 0.3, 2)
    np.testing.assert_allclose(res.update.double().numpy(), expected, rtol=1e-6, atol=1e-7)


def test_previous_start_resets_when_the_dimension_changes() -> None:
    agg = CenteredClipping(tau=0.1)
    agg.aggregate(torch.ones(3, 5), torch.ones(3), make_ctx(3, 5))
    u = torch.full((3, 7), 2.0)
    res = agg.aggregate(u, torch.ones(3), make_ctx(3, 7, server_round=2))
    expected = cc_brute_force(u.double().numpy(), np.zeros(7), 0.1, 1)
    np.testing.assert_allclose(res.update.double().numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("start", ["zero", "previous"])
def test_infinite_tau_is_the_plain_mean(start: str) -> None:
    g = torch.Generator().manual_seed(2)
    agg = CenteredClipping(tau=math.inf, iterations=3, start=start)  # type: ignore[arg-type]
    for rnd in (1, 2):
        u = torch.randn(8, 30, generator=g) * 50
        res = agg.aggregate(u, torch.rand(8, generator=g), make_ctx(8, 30, server_round=rnd))
        torch.testing.assert_close(res.update, u.mean(0), rtol=1e-5, atol=1e-5)


def test_one_outlier_moves_one_step_by_exactly_tau_over_n() -> None:
    # start 0, honest updates inside the ball of radius tau: only the outlier is clipped, so the
    # aggregate is the honest sum / n plus the outlier's direction · tau / n
    g = torch.Generator().manual_seed(8)
    n, d, tau = 10, 50, 1.0
    honest = torch.randn(n - 1, d, generator=g)
    honest = honest / honest.norm(dim=1, keepdim=True) * 0.5
    outlier = torch.randn(d, generator=g) * 1e6
    u = torch.cat([honest, outlier[None]])
    res = CenteredClipping(tau=tau, start="zero").aggregate(u, torch.ones(n), make_ctx(n, d))
    honest_part = honest.double().sum(0) / n
    shift = res.update.double() - honest_part
    assert float(shift.norm()) == pytest.approx(tau / n, rel=1e-5)
    torch.testing.assert_close(
        shift / shift.norm(), outlier.double() / outlier.double().norm(), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_one_outlier_moves_the_aggregate_by_at_most_tau_over_n_per_iteration(iterations: int) -> None:
    # honest updates all equal h and the start is h (the previous round's aggregate): each step moves v
    # by at most τ/n through the outlier, and the honest pull only brings it back: ‖v_L − h‖ ≤ L·τ/n
    g = torch.Generator().manual_seed(iterations)
    n, d, tau = 8, 20, 0.5
    h = torch.randn(d, generator=g)
    agg = CenteredClipping(tau=tau, iterations=iterations, start="previous")
    agg.previous = h.double()  # as if the last round had returned h
    u = h.repeat(n, 1)
    u[3] = h + 1e5 * torch.randn(d, generator=g)
    res = agg.aggregate(u, torch.ones(n), make_ctx(n, d, server_round=2))
    moved = float((res.update.double() - h.double()).norm())
    assert 0 < moved <= iterations * tau / n * (1 + 1e-6)
    if iterations == 1:
        assert moved == pytest.approx(tau / n, rel=1e-5)


def test_single_client_and_any_weights() -> None:
    x = torch.tensor([[3.0, -4.0]])
    for w in (torch.ones(1), torch.zeros(1), torch.tensor([float("nan")]), torch.tensor([-2.0])):
        res = CenteredClipping(tau=1.0, start="zero").aggregate(x, w, make_ctx(1, 2, ids=[42]))
        torch.testing.assert_close(res.update, torch.tensor([0.6, -0.8]))  # clipped to radius 1
        assert res.accepted == (42,) and set(res.scores) == {42}
    big = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    res = CenteredClipping().aggregate(
        big, torch.tensor([0.0, -1.0, float("inf"), 1e30, 2.0]), make_ctx(5, 6)
    )
    assert bool(torch.isfinite(res.update).all())


def test_zero_updates_and_huge_values_stay_finite() -> None:
    res = CenteredClipping(tau=1.0).aggregate(torch.zeros(4, 3), torch.ones(4), make_ctx(4, 3))
    assert torch.equal(res.update, torch.zeros(3))
    u = torch.tensor([[1e30, -1e30], [0.0, 0.0], [1.0, 1.0]])
    res = CenteredClipping(tau=1.0, iterations=5).aggregate(u, torch.ones(3), make_ctx(3, 2))
    assert bool(torch.isfinite(res.update).all()) and float(res.update.norm()) <= 5 * 1.0 + 1e-6


def test_zero_iterations_return_the_start() -> None:
    u = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0]])
    start = torch.tensor([1.0, 1.0])
    assert torch.equal(centered_clip(u, start, tau=1.0, iterations=0), start.double())


def test_registry_params() -> None:
    agg = AGGREGATORS.create("centered_clipping", {"tau": 2.5, "iterations": 3, "start": "zero"})
    assert isinstance(agg, CenteredClipping) and (agg.tau, agg.iterations, agg.start) == (2.5, 3, "zero")
    for bad in ({"tau": 0.0}, {"iterations": 0}, {"start": "median"}, {"beta": 1}):
        with pytest.raises(BadParams):
            AGGREGATORS.create("centered_clipping", bad)
    with pytest.raises(TypeError):
        CenteredClipping(1.0)  # type: ignore[misc]  # keyword-only
    with pytest.raises(ValueError):
        CenteredClipping(tau=-1.0)
