"""DnC (Shejwalkar & Houmansadr, NDSS 2021, Algorithm 2) against a loop with numpy's SVD, on a planted
attack, and for determinism. Tolerances are stated per test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defenses.aggregation.dnc import DnC, dnc_filter, dnc_outlier_scores
from defenses.base import AGGREGATORS
from simulator.registry import BadParams
from tests.helpers.round_context import make_ctx


def dnc_brute_force(
    u: np.ndarray, *, f: int, c: float, niters: int, b: int, gen: torch.Generator
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Algorithm 2 with loops: the same coordinate draws, numpy's SVD, per-row scores."""
    n, d = u.shape
    good = set(range(n))
    max_score = np.zeros(n)
    for _ in range(niters):
        cols = np.sort(torch.randperm(d, generator=gen)[:b].numpy()) if b < d else np.arange(d)
        sub = u[:, cols]
        mu = sub.mean(axis=0)
        _, _, vt = np.linalg.svd(sub - mu, full_matrices=False)
        v = vt[0]
        s = np.array([float(np.dot(sub[i] - mu, v)) ** 2 for i in range(n)])
        max_score = np.maximum(max_score, s)
        kept = np.argsort(s, kind="stable")[: n - int(c * f)]
        good &= {int(i) for i in kept}
    rows = sorted(good)
    return u[rows].mean(axis=0), rows, max_score


@pytest.mark.parametrize(
    ("n", "d", "f", "c", "niters", "b"),
    [(10, 300, 2, 1.0, 5, 50), (15, 1000, 3, 1.5, 4, 200), (8, 40, 1, 1.0, 3, 10_000)],
)
def test_brute_force(n: int, d: int, f: int, c: float, niters: int, b: int) -> None:
    g = torch.Generator().manual_seed(n + d)
    u = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.rand(
        n, 1, generator=g, dtype=torch.float64
    )
    ctx = make_ctx(n, d, server_round=4)
    res = DnC(num_malicious=f, filtering_fraction=c, niters=niters, subsample_dim=b).aggregate(
        u, torch.ones(n), ctx
    )
    upd, rows, max_score = dnc_brute_force(u.numpy(), f=f, c=c, niters=niters, b=b, gen=ctx.generator("dnc"))
    assert res.accepted == tuple(rows)
    np.testing.assert_allclose(res.update.numpy(), upd, rtol=1e-10, atol=1e-12)  # float64 input
    np.testing.assert_allclose([res.scores[i] for i in range(n)], max_score, rtol=1e-8, atol=1e-12)


def test_outlier_scores_equal_svd_projection() -> None:
    x = np.random.default_rng(1).normal(size=(12, 70))
    c = x - x.mean(axis=0)
    v = np.linalg.svd(c)[2][0]
    np.testing.assert_allclose(dnc_outlier_scores(torch.from_numpy(x)).numpy(), (c @ v) ** 2, rtol=1e-9)


def planted_round(seed: int, *, n: int = 20, f: int = 4, d: int = 3000) -> tuple[torch.Tensor, list[int]]:
    """Benign ``base + noise``; the last ``f`` clients send ``base − z·σ·e`` for one unit direction
    ``e`` (ALIE-like: a common shift smaller than the benign spread per coordinate, but aligned, so
    it is the principal direction of the centred updates)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g)
    sigma = 0.5
    benign = base + sigma * torch.randn(n - f, d, generator=g)
    e = torch.sign(torch.randn(d, generator=g))  # a shift of z·σ in every coordinate
    evil = base - 1.0 * sigma * e + 0.05 * sigma * torch.randn(f, d, generator=g)
    return torch.cat([benign, evil]), list(range(n - f, n))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_detects_a_planted_shifted_group(seed: int) -> None:
    u, evil = planted_round(seed)
    n, d = u.shape
    res = DnC(num_malicious=len(evil), subsample_dim=500).aggregate(u, torch.ones(n), make_ctx(n, d))
    assert set(res.accepted) == set(range(n)) - set(evil)
    assert min(res.scores[i] for i in evil) > max(res.scores[i] for i in res.accepted)
    torch.testing.assert_close(res.update, u[: n - len(evil)].mean(0), rtol=1e-5, atol=1e-5)


def test_deterministic_given_seed_and_round_and_row_order() -> None:
    u, _ = planted_round(7, n=12, f=2, d=400)
    n, d = u.shape
    ids = [30 + 7 * i for i in range(n)]
    a = DnC(num_malicious=3, subsample_dim=20).aggregate(u, torch.ones(n), make_ctx(n, d, ids=ids))
    b = DnC(num_malicious=3, subsample_dim=20).aggregate(u.clone(), torch.ones(n), make_ctx(n, d, ids=ids))
    assert torch.equal(a.update, b.update) and a.accepted == b.accepted and a.scores == b.scores
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    c = DnC(num_malicious=3, subsample_dim=20).aggregate(
        u[perm], torch.ones(n), make_ctx(n, d, ids=[ids[i] for i in perm])
    )
    assert set(c.accepted) == set(a.accepted) and c.scores == a.scores  # bitwise: scored in id order
    other = [
        DnC(num_malicious=3, subsample_dim=20).aggregate(u, torch.ones(n), make_ctx(n, d, ids=ids, **kw))
        for kw in ({"server_round": 2}, {"seed": 18})
    ]
    assert all(o.scores != a.scores for o in other)  # other coordinates drawn


def test_empty_intersection_falls_back_to_the_least_flagged() -> None:
    # client i is large only at coordinate i; with one coordinate per iteration the outlier changes
    # with the coordinate drawn, and keeping a single client per iteration empties the intersection
    n, d = 3, 3
    u = torch.eye(3) * 5.0
    ctx = make_ctx(n, d, server_round=1)
    good, flagged, _ = dnc_filter(
        u, ids=list(range(n)), num_remove=2, niters=8, subsample_dim=1, generator=ctx.generator("dnc")
    )
    assert good == [] and len(set(flagged.tolist())) > 1  # the draw of this seed covers two coordinates
    res = DnC(num_malicious=2, niters=8, subsample_dim=1).aggregate(u, torch.ones(n), ctx)
    fewest = [i for i in range(n) if flagged[i] == flagged.min()]
    assert res.accepted == tuple(fewest)
    torch.testing.assert_close(res.update, u[fewest].mean(0))


def test_small_rounds_and_any_weights() -> None:
    x = torch.tensor([[1.0, -2.0, 3.0]])
    for w in (torch.ones(1), torch.zeros(1), torch.tensor([float("nan")])):
        res = DnC(num_malicious=5).aggregate(x, w, make_ctx(1, 3, ids=[9]))
        assert torch.equal(res.update, x[0]) and res.accepted == (9,) and res.scores == {9: 0.0}
    u = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    res = DnC(num_malicious=10, filtering_fraction=2.0).aggregate(
        u, torch.tensor([0.0, -1.0, 1e30, 2.0]), make_ctx(4, 6)
    )
    assert len(res.accepted) >= 1 and bool(torch.isfinite(res.update).all())
    res0 = DnC(num_malicious=0).aggregate(u, torch.ones(4), make_ctx(4, 6))  # f = 0: plain mean
    torch.testing.assert_close(res0.update, u.mean(0))
    assert res0.accepted == (0, 1, 2, 3)


def test_registry_params() -> None:
    agg = AGGREGATORS.create(
        "dnc", {"num_malicious": 3, "filtering_fraction": 1.5, "niters": 2, "subsample_dim": 100}
    )
    assert isinstance(agg, DnC) and (
        agg.num_malicious,
        agg.filtering_fraction,
        agg.niters,
        agg.subsample_dim,
    ) == (3, 1.5, 2, 100)
    for bad in (
        {"num_malicious": -1},
        {"niters": 0},
        {"subsample_dim": 0},
        {"filtering_fraction": -0.5},
        {"c": 1.0},
    ):
        with pytest.raises(BadParams):
            AGGREGATORS.create("dnc", bad)
    with pytest.raises(TypeError):
        DnC(2)  # type: ignore[misc]  # keyword-only
