"""Fang et al. (USENIX Security 2020): the Krum attack against a brute-force Krum and the paper's λ
bound computed with plain loops; the trimmed-mean / median attack against per-coordinate interval
checks and its effect on numpy trimmed mean / median. The project's Krum (defenses) is used as a
cross-check only. Tolerances are stated per assertion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attacks.poisoning import (
    fang_krum,
    fang_krum_lambda,
    fang_krum_lambda_bound,
    fang_trimmed_mean,
    fang_trimmed_mean_partial,
    krum_select,
)
from defenses.aggregation.krum import select_multikrum


def brute_krum(updates: torch.Tensor, f: int) -> int:
    """Krum by loops: score = sum of the max(1, n − f − 2) smallest squared distances to other rows;
    ties to the lowest index."""
    u = updates.double().tolist()
    n = len(u)
    k = min(max(1, n - f - 2), n - 1)
    scores = []
    for i in range(n):
        ds = sorted(math.fsum((a - b) ** 2 for a, b in zip(u[i], u[j])) for j in range(n) if j != i)
        scores.append(math.fsum(ds[:k]))
    return min(range(n), key=lambda i: (scores[i], i))


def benign_set(n: int, d: int, seed: int, *, shift: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


# ---- Krum attack ----


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("f", [0, 1, 3])
def test_krum_select_matches_brute_force_and_project_krum(seed: int, f: int) -> None:
    u = benign_set(11, 15, seed)
    assert krum_select(u, num_malicious=f) == brute_krum(u, f)
    assert krum_select(u, num_malicious=f) == select_multikrum(u, f=f, m=1)[0][0]


@pytest.mark.parametrize(("n_b", "c", "d"), [(16, 5, 10), (10, 2, 40), (4, 1, 7), (20, 8, 3)])
def test_lambda_bound_matches_loops(n_b: int, c: int, d: int) -> None:
    b = benign_set(n_b, d, n_b + c)
    rows = b.tolist()
    sums = []
    for i in range(n_b):
        ds = sorted(math.dist(rows[i], rows[j]) for j in range(n_b) if j != i)
        sums.append(math.fsum(ds[: n_b - 2]))  # |Γ̃| = m − c − 2 = n_b − 2
    expected = min(sums) / ((n_b - c - 1) * math.sqrt(d)) + max(
        math.dist(r, [0.0] * d) for r in rows
    ) / math.sqrt(d)
    assert fang_krum_lambda_bound(b, num_malicious=c) == pytest.approx(expected, rel=1e-10)


def test_lambda_bound_needs_benign_majority_of_two() -> None:
    with pytest.raises(ValueError, match="lambda_init"):
        fang_krum_lambda_bound(benign_set(5, 4, 0), num_malicious=4)
    with pytest.raises(ValueError, match="lambda_init"):
        fang_krum(benign_set(5, 4, 0), num_malicious=4)


def expected_lambda(b: torch.Tensor, c: int, threshold: float = 1e-5) -> tuple[float, bool]:
    """Halving from the bound with the brute-force Krum on materialised updates."""
    s = torch.sign(b.mean(0))
    lam = fang_krum_lambda_bound(b, num_malicious=c)
    while lam >= threshold:
        if brute_krum(torch.cat([(-lam * s).expand(c, -1), b]), c) < c:
            return lam, True
        lam /= 2
    return lam, False


@pytest.mark.parametrize(
    ("n_b", "c", "d", "seed"), [(16, 5, 10, 0), (16, 5, 10, 1), (12, 3, 20, 2), (20, 6, 8, 3), (9, 2, 30, 4)]
)
def test_krum_lambda_is_the_first_halving_that_krum_selects(n_b: int, c: int, d: int, seed: int) -> None:
    b = benign_set(n_b, d, seed)
    expected = expected_lambda(b, c)
    fast = fang_krum_lambda(b, num_malicious=c)
    assert fast == expected  # the same halving sequence: exact
    via_project = fang_krum_lambda(b, num_malicious=c, select=lambda u: select_multikrum(u, f=c, m=1)[0][0])
    assert via_project == expected


def test_krum_attack_gets_selected_and_deviates_against_the_direction() -> None:
    n_b, c, d = 16, 5, 10
    b = benign_set(n_b, d, 0)
    lam, ok = fang_krum_lambda(b, num_malicious=c)
    assert ok and lam > 0
    mal = fang_krum(b, num_malicious=c)
    s = torch.sign(b.mean(0))
    torch.testing.assert_close(mal, (-lam * s).expand(c, -1), rtol=0, atol=0)
    chosen = select_multikrum(torch.cat([mal, b]), f=c, m=1)[0][0]
    assert chosen < c
    assert float(mal[0] @ s) == pytest.approx(-lam * d, rel=1e-12)  # opposite to s, |s_j| = 1 here


def test_krum_search_stops_below_the_threshold() -> None:
    b = benign_set(8, 5, 1)
    calls: list[float] = []

    def never_malicious(u: torch.Tensor) -> int:
        calls.append(float(u[0].abs().max()))
        return u.shape[0] - 1

    lam, ok = fang_krum_lambda(b, num_malicious=2, select=never_malicious, lambda_init=1.0)
    # λ = 1, 1/2, …, 2⁻¹⁶ ≥ 10⁻⁵ are tried; 2⁻¹⁷ < 10⁻⁵ stops the search
    assert not ok and lam == 2.0**-17 and len(calls) == 17
    assert calls[0] == 1.0 and calls[-1] == 2.0**-16


def test_krum_supporters_within_epsilon_ball() -> None:
    b = benign_set(16, 10, 0)
    eps = 0.01
    mal = fang_krum(b, num_malicious=5, epsilon=eps, generator=torch.Generator().manual_seed(3))
    again = fang_krum(b, num_malicious=5, epsilon=eps, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mal, again)
    lam, _ = fang_krum_lambda(b, num_malicious=5)
    torch.testing.assert_close(mal[0], -lam * torch.sign(b.mean(0)), rtol=0, atol=0)
    dist = torch.linalg.vector_norm(mal[1:] - mal[0], dim=1)
    assert bool((dist <= eps * (1 + 1e-12)).all()) and bool((dist > 0).all())


# ---- trimmed-mean / median attack ----


def interval(s: float, w_max: float, w_min: float, b: float) -> tuple[float, float]:
    """The paper's sampling interval for one coordinate (s = 0 treated as +1)."""
    if s < 0:
        return (w_max, b * w_max) if w_max > 0 else (w_max, w_max / b)
    return (w_min / b, w_min) if w_min > 0 else (b * w_min, w_min)


def test_trimmed_mean_attack_samples_in_the_papers_intervals() -> None:
    n_b, c, d = 12, 4, 60
    g = torch.Generator().manual_seed(7)
    b = torch.randn(n_b, d, generator=g, dtype=torch.float64) * 0.5 + torch.linspace(
        -1.5, 1.5, d, dtype=torch.float64
    )
    b[:, 0] = torch.tensor([-2.0, 2.0, -1.0, 1.0] * 3, dtype=torch.float64)  # zero mean: s = 0
    mal = fang_trimmed_mean(b, num_malicious=c, generator=torch.Generator().manual_seed(1))
    assert mal.shape == (c, d)
    arr, m = b.numpy(), mal.numpy()
    for j in range(d):
        s = float(np.sign(arr[:, j].mean()))
        if j == 0:
            assert s == 0.0
        lo, hi = interval(s, arr[:, j].max(), arr[:, j].min(), 2.0)
        assert np.all(m[:, j] >= lo - 1e-12) and np.all(m[:, j] <= hi + 1e-12)
        if s < 0:
            assert np.all(m[:, j] >= arr[:, j].max() - 1e-12)
        else:
            assert np.all(m[:, j] <= arr[:, j].min() + 1e-12)
    # the four (w_max sign, s) cases all occur in this set
    cases = {
        (
            np.sign(arr[:, j].mean()) < 0,
            (arr[:, j].max() if np.sign(arr[:, j].mean()) < 0 else arr[:, j].min()) > 0,
        )
        for j in range(d)
    }
    assert len(cases) == 4
    again = fang_trimmed_mean(b, num_malicious=c, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mal, again)


def test_trimmed_mean_attack_in_model_space_with_reference() -> None:
    n_b, c, d = 10, 3, 40
    b = benign_set(n_b, d, 5, shift=0.0) * 0.1
    ref = torch.linspace(-2, 2, d, dtype=torch.float64)
    mal = fang_trimmed_mean(b, num_malicious=c, reference=ref, generator=torch.Generator().manual_seed(0))
    models, mal_models = (b + ref).numpy(), (mal + ref).numpy()
    for j in range(d):
        s = float(np.sign(b.numpy()[:, j].mean()))  # the change direction: the mean update's sign
        lo, hi = interval(s, models[:, j].max(), models[:, j].min(), 2.0)
        assert np.all(mal_models[:, j] >= lo - 1e-12) and np.all(mal_models[:, j] <= hi + 1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_trimmed_mean_attack_moves_median_and_trimmed_mean_against_s(seed: int) -> None:
    n_b, c, d = 15, 4, 80
    b = benign_set(n_b, d, seed, shift=0.2)
    mal = fang_trimmed_mean(b, num_malicious=c, generator=torch.Generator().manual_seed(seed))
    allu = torch.cat([mal, b]).numpy()
    arr = b.numpy()
    s = np.sign(arr.mean(axis=0))
    s[s == 0] = 1.0
    med_move = (np.median(allu, axis=0) - np.median(arr, axis=0)) * s
    srt = np.sort(allu, axis=0)
    trimmed = srt[c : allu.shape[0] - c].mean(axis=0)  # trimming k = c per side
    tm_move = (trimmed - arr.mean(axis=0)) * s
    assert np.all(med_move <= 1e-12) and np.all(tm_move <= 1e-12)
    assert (tm_move < 0).mean() > 0.95 and (med_move < 0).mean() > 0.95


def test_partial_knowledge_attack_samples_three_to_four_std_away() -> None:
    own = benign_set(6, 50, 9)
    mal = fang_trimmed_mean_partial(own, num_malicious=3, generator=torch.Generator().manual_seed(2))
    arr = own.numpy()
    mu, sd = arr.mean(axis=0), arr.std(axis=0, ddof=1)
    s = np.sign(mu)
    lo = np.where(s < 0, mu + 3 * sd, mu - 4 * sd)
    hi = np.where(s < 0, mu + 4 * sd, mu - 3 * sd)
    m = mal.numpy()
    assert np.all(m >= lo - 1e-12) and np.all(m <= hi + 1e-12)
