"""Multi-metrics (Huang et al., ICCV 2023): selection versus an independent brute-force re-computation,
planted attacks, and robustness of the covariance step.

Brute-force scores are compared with ``rtol=1e-6`` (float64 both sides, different summation order);
selections exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from defenses.aggregation.multi_metrics import MultiMetrics, mahalanobis_scores, multi_metrics_features
from simulator.context import RoundContext
from simulator.flat import Layout


def make_ctx(n: int, d: int, *, global_vector: torch.Tensor | None = None) -> RoundContext:
    gv = global_vector if global_vector is not None else torch.zeros(d)
    return RoundContext(
        server_round=3,
        seed=5,
        global_vector=gv,
        layout=Layout(("w",), ((d,),)),
        client_ids=tuple(range(40, 40 + n)),
        num_examples=(20,) * n,
        num_clients=100,
        expected_clients_per_round=float(n),
    )


def brute_force(
    updates: np.ndarray,
    keep_fraction: float,
    *,
    official: bool = False,
    global_vector: np.ndarray | None = None,
) -> tuple[list[int], np.ndarray]:
    """The paper's rule (or the official code's), written with explicit loops over client pairs."""
    vecs = updates.astype(np.float64)
    if official:
        assert global_vector is not None
        vecs = vecs + global_vector.astype(np.float64)
    n = len(vecs)
    feats = np.zeros((n, 3))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            a, b = vecs[i], vecs[j]
            cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            feats[i, 0] += (1 - cos) ** 2 if official else 1 - cos
            feats[i, 1] += float(np.abs(a - b).sum())
            feats[i, 2] += (
                abs(np.linalg.norm(a) - np.linalg.norm(b))
                if official
                else float(np.sqrt(((a - b) ** 2).sum()))
            )
    inv = np.linalg.inv(np.cov(feats.T))
    scores = np.array([feats[i] @ inv @ feats[i] for i in range(n)])
    k = max(1, int(keep_fraction * n))
    return sorted(np.argsort(scores, kind="stable")[:k].tolist()), scores


def benign_round(n: int, d: int, seed: int) -> torch.Tensor:
    """Correlated benign updates: a shared direction plus client noise, varied norms."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g)
    return (base + 0.8 * torch.randn(n, d, generator=g)) * torch.rand(n, 1, generator=g).add(0.5) * 0.01


@pytest.mark.parametrize(("n", "keep", "seed"), [(10, 0.3, 0), (10, 0.5, 1), (17, 0.3, 2), (30, 0.2, 3)])
def test_selection_equals_brute_force_paper(n: int, keep: float, seed: int) -> None:
    updates = benign_round(n, 64, seed)
    expected_rows, expected_scores = brute_force(updates.numpy(), keep)
    ctx = make_ctx(n, 64)
    res = MultiMetrics(keep_fraction=keep).aggregate(updates, torch.ones(n), ctx)
    assert sorted(ctx.client_ids.index(c) for c in res.accepted) == expected_rows
    np.testing.assert_allclose([res.scores[c] for c in ctx.client_ids], expected_scores, rtol=1e-6)
    np.testing.assert_allclose(res.update.numpy(), updates[expected_rows].mean(0).numpy(), atol=1e-7)


@pytest.mark.parametrize(("n", "seed"), [(10, 4), (20, 5)])
def test_selection_equals_brute_force_official_code(n: int, seed: int) -> None:
    updates = benign_round(n, 64, seed)
    gv = torch.randn(64, generator=torch.Generator().manual_seed(99)) * 0.1
    expected_rows, expected_scores = brute_force(
        updates.numpy(), 0.3, official=True, global_vector=gv.numpy()
    )
    ctx = make_ctx(n, 64, global_vector=gv)
    res = MultiMetrics(variant="official-code").aggregate(updates, torch.ones(n), ctx)
    assert sorted(ctx.client_ids.index(c) for c in res.accepted) == expected_rows
    # the scores of the official variant involve w = g + Δ: cancellation makes them less exact
    np.testing.assert_allclose([res.scores[c] for c in ctx.client_ids], expected_scores, rtol=1e-4)


def test_official_variant_differs_from_paper() -> None:
    updates = benign_round(10, 64, 6)
    gv = torch.full((64,), 0.05)
    paper = multi_metrics_features(updates)
    code = multi_metrics_features(updates, variant="official-code", offset=gv)
    torch.testing.assert_close(paper[:, 1], code[:, 1])  # Manhattan: the offset cancels
    assert not torch.allclose(paper[:, 0], code[:, 0])
    assert not torch.allclose(paper[:, 2], code[:, 2])


def test_weighted_by_data_size() -> None:
    updates = benign_round(10, 32, 7)
    weights = torch.arange(1.0, 11.0)
    res = MultiMetrics(keep_fraction=0.5).aggregate(updates, weights, make_ctx(10, 32))
    rows = [c - 40 for c in res.accepted]
    w = weights[rows]
    expected = (w[:, None] * updates[rows]).sum(0) / w.sum()
    torch.testing.assert_close(res.update, expected, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_rejects_scaled_and_pgd_direction_attackers(seed: int) -> None:
    n, d = 10, 2000
    updates = benign_round(n, d, seed)
    g = torch.Generator().manual_seed(1000 + seed)
    benign = [0, 1, 2, 4, 5, 6, 7, 9]
    norms = updates[benign].norm(dim=1)
    typical = benign[int(norms.argsort()[len(benign) // 2])]
    updates[3] = 10.0 * updates[typical]  # model replacement: a typical benign update scaled ×10
    # PGD: a different direction projected onto the L2 ball of the typical benign norm
    benign_norm = float(norms.median())
    other = torch.randn(d, generator=g)
    updates[8] = other / other.norm() * benign_norm
    ctx = make_ctx(n, d)
    res = MultiMetrics().aggregate(updates, torch.ones(n), ctx)
    assert 43 not in res.accepted and 48 not in res.accepted
    # Both rank among the 3 most suspicious (not always the top 2: one big outlier inflates the
    # covariance of the distance features and so partly masks itself in x^T Σ^-1 x).
    ranked = sorted(ctx.client_ids, key=lambda c: res.scores[c], reverse=True)
    assert {43, 48} <= set(ranked[:3])
    assert ranked[0] == 48 or ranked[1] == 48
    assert len(res.accepted) == 3


def test_singular_covariance_is_handled() -> None:
    # three clients give at most a rank-2 covariance of the 3 features; collinear features as well
    for updates in (benign_round(3, 16, 0), torch.ones(5, 8) * torch.arange(1.0, 6.0)[:, None]):
        n = updates.shape[0]
        res = MultiMetrics().aggregate(updates, torch.ones(n), make_ctx(n, updates.shape[1]))
        assert all(math.isfinite(s) for s in res.scores.values())
        assert len(res.accepted) == 1
    assert mahalanobis_scores(torch.ones(1, 3)).tolist() == [0.0]


def test_bad_params() -> None:
    with pytest.raises(ValueError):
        MultiMetrics(keep_fraction=0.0)
    with pytest.raises(ValueError):
        MultiMetrics(variant="nope")  # type: ignore[arg-type]
