"""FLAME, FoolsGold, RLR, RFA, Bulyan, norm clipping and the shared helpers against closed forms or
brute-force references. Tolerances are stated per test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from defenses.aggregation._linalg import l1_distance_row_sums, lowest
from defenses.aggregation.bulyan import Bulyan
from defenses.aggregation.flame import Flame
from defenses.aggregation.foolsgold import FoolsGold, foolsgold_weights
from defenses.aggregation.norm_clipping import NormClipping
from defenses.aggregation.rfa import RFA
from defenses.aggregation.rlr import RLR
from defenses.detection import detection_rates
from tests.helpers.round_context import make_ctx

# ---- helpers ----


def test_l1_row_sums_equal_cdist() -> None:
    u = torch.randn(13, 500, generator=torch.Generator().manual_seed(0))
    expected = torch.cdist(u.double(), u.double(), p=1).sum(1)
    torch.testing.assert_close(l1_distance_row_sums(u, max_elements=13 * 40), expected, rtol=1e-10, atol=1e-9)


def test_lowest_breaks_ties_by_id() -> None:
    assert lowest(torch.tensor([1.0, 1.0, 0.5, float("nan")]), 3, [9, 3, 5, 1]) == [2, 1, 0]


def test_detection_rates() -> None:
    assert detection_rates({0, 1, 2}, range(5), {3, 4}) == (1.0, 0.0)
    tpr, fpr = detection_rates({0, 4}, range(5), {3, 4, 9})
    assert (tpr, fpr) == (0.5, 2 / 3)
    tpr, fpr = detection_rates(set(), [1, 2], [1, 2])
    assert tpr == 1.0 and math.isnan(fpr)


# ---- norm clipping ----


def test_norm_clipping_hand_made_norms() -> None:
    u = torch.tensor([[3.0, 4.0], [0.6, 0.8]])
    res = NormClipping(max_norm=2.0).aggregate(u, torch.tensor([1.0, 3.0]), make_ctx(2, 2))
    # clipped rows: (1.2, 1.6) and (0.6, 0.8); example-weighted mean with weights 1 and 3
    torch.testing.assert_close(res.update, torch.tensor([0.75, 1.0]), atol=1e-6, rtol=0)
    assert res.scores == pytest.approx({0: 2.5, 1: 0.5})


def test_norm_clipping_noise_std_and_seed() -> None:
    d = 200_000
    u = torch.zeros(3, d)
    a = NormClipping(max_norm=1.0, noise_std=0.025).aggregate(u, torch.ones(3), make_ctx(3, d)).update
    b = NormClipping(max_norm=1.0, noise_std=0.025).aggregate(u, torch.ones(3), make_ctx(3, d)).update
    ctx2 = make_ctx(3, d, server_round=2)
    c = NormClipping(max_norm=1.0, noise_std=0.025).aggregate(u, torch.ones(3), ctx2).update
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(float(a.std()) / 0.025 - 1) < 0.01  # 200k samples: relative sd of the estimate ≈ 0.16 %


# ---- RLR ----


def test_rlr_hand_made_sign_pattern() -> None:
    u = torch.tensor(
        [[1.0, 1.0, -1.0, 2.0], [1.0, -1.0, -1.0, 2.0], [1.0, 1.0, 1.0, -2.0], [1.0, 1.0, -1.0, 0.0]]
    )
    w = torch.tensor([1.0, 1.0, 1.0, 1.0])
    # sign sums: 4, 2, -2, 1  → with θ = 2: +, +, +, −
    res = RLR(threshold=2).aggregate(u, w, make_ctx(4, 4))
    mean = u.mean(0)
    torch.testing.assert_close(res.update, mean * torch.tensor([1.0, 1.0, 1.0, -1.0]))
    res3 = RLR(threshold=3).aggregate(u, w, make_ctx(4, 4))
    torch.testing.assert_close(res3.update, mean * torch.tensor([1.0, -1.0, -1.0, -1.0]))
    assert res.scores[1] == pytest.approx(0.25) and res.scores[0] == pytest.approx(0.0)


# ---- RFA ----


@pytest.mark.parametrize(
    ("weights", "t_star"), [([1, 1, 1, 1, 1], 2.0), ([1, 1, 1, 1, 5], 100.0), ([3, 1, 1, 1, 1], 1.0)]
)
def test_rfa_collinear_is_weighted_median(weights: list[float], t_star: float) -> None:
    direction = torch.randn(50, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.0, 1.0, 2.0, 10.0, 100.0])
    u = t[:, None] * direction
    res = RFA(max_iter=2000, nu=1e-9, ftol=0.0).aggregate(
        u, torch.tensor(weights, dtype=torch.float32), make_ctx(5, 50)
    )
    # geometric median of collinear points = weighted 1-D median; tolerance 1e-3 of ‖direction‖
    assert float((res.update - t_star * direction).norm()) < 1e-3 * float(direction.norm())


def test_rfa_triangle_fermat_point() -> None:
    # equilateral triangle: the geometric median is the centroid
    h = math.sqrt(3) / 2
    pts = torch.tensor([[1.0, 0.0], [-0.5, h], [-0.5, -h]]) + torch.tensor([2.0, 1.0])
    res = RFA(max_iter=500, ftol=0.0).aggregate(pts, torch.ones(3), make_ctx(3, 2))
    torch.testing.assert_close(res.update, torch.tensor([2.0, 1.0]), atol=1e-5, rtol=0)


# ---- Bulyan ----


def bulyan_brute_force(u: np.ndarray, f: int) -> np.ndarray:
    """El Mhamdi et al. (2018) with loops: recursive Krum, then per coordinate the β closest to the median."""
    n = len(u)
    theta, beta = n - 2 * f, n - 4 * f
    remaining, chosen = list(range(n)), []
    for _ in range(theta):
        m = len(remaining)
        k = max(1, m - f - 2)
        scores = []
        for i in remaining:
            dists = sorted(float(((u[i] - u[j]) ** 2).sum()) for j in remaining if j != i)
            scores.append(sum(dists[:k]))
        best = remaining[int(np.argmin(scores))]
        chosen.append(best)
        remaining.remove(best)
    sel = u[chosen]
    out = np.zeros(u.shape[1])
    for c in range(u.shape[1]):
        col = sel[:, c]
        med = np.median(col)
        out[c] = np.mean(sorted(col, key=lambda v: abs(v - med))[:beta])
    return out


@pytest.mark.parametrize(("n", "f"), [(7, 1), (11, 2), (10, 1)])
def test_bulyan_brute_force(n: int, f: int) -> None:
    u = torch.randn(n, 30, generator=torch.Generator().manual_seed(n + f))
    u[0] += 8.0  # an outlier that must not be selected
    res = Bulyan(num_malicious=f).aggregate(u, torch.ones(n), make_ctx(n, 30))
    np.testing.assert_allclose(res.update.numpy(), bulyan_brute_force(u.double().numpy(), f), atol=1e-6)
    assert 0 not in res.accepted and len(res.accepted) == n - 2 * f


def test_bulyan_lowers_f_for_small_rounds() -> None:
    u = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    res = Bulyan(num_malicious=2).aggregate(u, torch.ones(5), make_ctx(5, 8))  # needs 11, lowered to f = 0
    torch.testing.assert_close(res.update, u.mean(0))


# ---- FLAME ----


def flame_round(seed: int) -> tuple[torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(seed)
    d = 400
    base = torch.randn(d, generator=g)
    benign = (base + 0.3 * torch.randn(7, d, generator=g)) * torch.rand(7, 1, generator=g).add(0.5)
    evil_dir = torch.randn(d, generator=g)
    evil = (evil_dir + 0.1 * torch.randn(3, d, generator=g)) * 3.0
    return torch.cat([benign, evil]), [7, 8, 9]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flame_keeps_majority_cluster_and_clips_to_median(seed: int) -> None:
    u, evil = flame_round(seed)
    res = Flame(noise_lambda=0.0).aggregate(u, torch.ones(10), make_ctx(10, u.shape[1]))
    # HDBSCAN may also label an outlying benign client noise (FLAME's false positives), never an attacker
    acc = sorted(res.accepted)
    assert set(acc) <= set(range(7)) and len(acc) >= 6
    norms = u.double().norm(dim=1)
    s = float(np.median(norms.numpy()))  # over all 10 clients
    clipped = u.double()[acc] * torch.clamp(s / norms[acc], max=1.0)[:, None]
    torch.testing.assert_close(res.update.double(), clipped.mean(0), atol=1e-6, rtol=0)
    assert min(res.scores[i] for i in evil) > max(res.scores[i] for i in range(7))


def test_flame_noise_is_lambda_times_median_norm() -> None:
    u, _ = flame_round(0)
    d = 100_000
    u = torch.cat([u, torch.zeros(10, d - u.shape[1])], dim=1)
    clean = Flame(noise_lambda=0.0).aggregate(u, torch.ones(10), make_ctx(10, d)).update
    noisy = Flame(noise_lambda=0.01).aggregate(u, torch.ones(10), make_ctx(10, d)).update
    s = float(np.median(u.double().norm(dim=1).numpy()))
    assert abs(float((noisy - clean).std()) / (0.01 * s) - 1) < 0.015  # 100k samples: sd ≈ 0.22 %


# ---- FoolsGold ----


def foolsgold_brute_force(cs: np.ndarray) -> np.ndarray:
    """Fung et al. (2020), Algorithm 1, with loops."""
    n = len(cs)
    cs = cs.copy() - np.eye(n)
    v = cs.max(axis=1)
    for i in range(n):
        for j in range(n):
            if v[i] < v[j]:
                cs[i, j] *= v[i] / v[j]
    a = np.clip(1 - cs.max(axis=1), 0, 1)
    a = a / a.max()
    a[a == 1] = 0.99
    with np.errstate(divide="ignore"):
        a = np.log(a / (1 - a)) + 0.5
    a[np.isinf(a) & (a > 1)] = 1
    return np.clip(a, 0, 1)


def test_foolsgold_weights_match_brute_force() -> None:
    x = np.random.default_rng(0).normal(size=(8, 20)) + np.linspace(0, 2, 20)
    cs = (x @ x.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(x, axis=1))
    got = foolsgold_weights(torch.from_numpy(cs)).numpy()
    np.testing.assert_allclose(got, foolsgold_brute_force(cs), atol=1e-9)


def test_foolsgold_zeroes_identical_sybils_across_rounds() -> None:
    g = torch.Generator().manual_seed(4)
    d = 300
    fg = FoolsGold()
    ids = [10, 11, 12, 13, 14, 20, 21]  # 20 and 21 are sybils
    for rnd in range(1, 4):
        u = torch.randn(7, d, generator=g)
        sybil = torch.randn(d, generator=g) + 2.0
        u[5] = sybil
        u[6] = sybil + (0.0 if rnd == 1 else 1e-3 * torch.randn(d, generator=g))
        res = fg.aggregate(u, torch.ones(7), make_ctx(7, d, server_round=rnd, ids=ids))
        assert res.scores[20] == pytest.approx(1.0, abs=1e-6)
        assert res.scores[21] == pytest.approx(1.0, abs=1e-6)
        assert 20 not in res.accepted and 21 not in res.accepted
        assert all(res.scores[c] < 0.5 for c in ids[:5])
    assert set(fg.history) == set(ids)
