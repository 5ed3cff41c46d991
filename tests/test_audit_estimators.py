"""Tests of simulator.audit.estimators against closed forms, dp_accounting and brute force.

All randomness is seeded; every numeric assertion states its tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution as pld
from scipy import stats

from simulator.audit import (
    OneRunBound,
    auc,
    epsilon_from_mu,
    gaussian_dp_mu,
    gaussian_fit_epsilon,
    null_cosine_std,
    one_run_epsilon_lower_bound,
)

# --------------------------------------------------------------------------------------------------
# brute-force oracles (deliberately naive; independent of the module's code paths)
# --------------------------------------------------------------------------------------------------


def _sigmoid(e: float) -> float:
    return math.exp(e) / (1.0 + math.exp(e))


def _bf_p_value(eps: float, *, r: int, v: int, m: int, delta: float) -> float:
    """Steinke et al. p-value, literally: f(v) + 2mδ max_i (f(v-i) - f(v)) / i, f(u) = P[Bin(r,q) ≥ u]."""
    q = _sigmoid(eps)

    def f(u: int) -> float:
        return float(stats.binom.sf(u - 1, r, q))

    extra = max(((f(v - i) - f(v)) / i for i in range(1, v + 1)), default=0.0)
    return min(1.0, f(v) + 2 * m * delta * extra)


def _bf_eps_pure(*, r: int, v: int, beta: float) -> float:
    """Largest ε in [0, 50] with P[Bin(r, e^ε/(1+e^ε)) ≥ v] ≤ β, by bisection on binom.sf directly."""

    def p(e: float) -> float:
        return float(stats.binom.sf(v - 1, r, _sigmoid(e)))

    if p(0.0) > beta:
        return 0.0
    lo, hi = 0.0, 50.0
    for _ in range(55):  # 50 / 2**55 ≈ 1.4e-15
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if p(mid) <= beta else (lo, mid)
    return lo


def _bf_correct(scores_in: np.ndarray, scores_out: np.ndarray, *, k_plus: int, k_minus: int) -> int:
    """Correct guesses with continuous (tie-free) scores: top k₊ guessed in, bottom k₋ guessed out."""
    s = np.concatenate([scores_in, scores_out])
    lab = np.r_[np.ones(scores_in.size, bool), np.zeros(scores_out.size, bool)]
    order = np.argsort(s)
    top = order[s.size - k_plus :]
    bottom = order[:k_minus]
    return int(lab[top].sum() + (~lab[bottom]).sum())


def _membership(rng: np.random.Generator, m: int) -> np.ndarray:
    return rng.random(m) < 0.5


# --------------------------------------------------------------------------------------------------
# epsilon_from_mu / Gaussian profile
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.5, 1.0, 2.0, 4.0])
def test_epsilon_from_mu_matches_dp_accounting_pld(mu: float) -> None:
    delta = 1e-5
    # value_discretization_interval 1e-3 instead of the default 1e-4: 10x faster, and the pessimistic PLD
    # moves ε by < 1e-6 here (both agree with epsilon_from_mu to ~1e-7 relative)
    dist = pld.from_gaussian_mechanism(
        standard_deviation=1.0 / mu, sensitivity=1.0, value_discretization_interval=1e-3
    )
    ref = dist.get_epsilon_for_delta(delta)
    assert epsilon_from_mu(mu, delta) == pytest.approx(ref, rel=1e-2)  # tolerance from the spec
    assert epsilon_from_mu(mu, delta) == pytest.approx(ref, rel=1e-5)  # what actually holds


@pytest.mark.parametrize("mu", [0.1, 1.0, 3.0, 10.0])
def test_epsilon_from_mu_inverts_balle_wang_closed_form(mu: float) -> None:
    delta = 1e-6
    e = epsilon_from_mu(mu, delta)
    closed = stats.norm.cdf(-e / mu + mu / 2) - math.exp(e) * stats.norm.cdf(-e / mu - mu / 2)
    assert closed == pytest.approx(delta, rel=1e-6)


def test_epsilon_from_mu_edges() -> None:
    assert epsilon_from_mu(0.0, 1e-5) == 0.0
    assert epsilon_from_mu(math.inf, 1e-5) == math.inf
    assert epsilon_from_mu(1e-3, 0.5) == 0.0  # TV distance 2Φ(μ/2) − 1 ≈ 4e-4 ≤ δ
    assert epsilon_from_mu(1.0, 1e-3) < epsilon_from_mu(1.0, 1e-6) < epsilon_from_mu(2.0, 1e-6)
    # large ε (e^ε ≈ 1e575 would overflow): the log-space profile still inverts to δ
    e = epsilon_from_mu(50.0, 1e-10)
    assert 1300.0 < e < 1600.0
    log_delta = stats.norm.logcdf(-e / 50 + 25) + math.log(
        -math.expm1(e + stats.norm.logcdf(-e / 50 - 25) - stats.norm.logcdf(-e / 50 + 25))
    )
    assert log_delta == pytest.approx(math.log(1e-10), rel=1e-6)
    with pytest.raises(ValueError):
        epsilon_from_mu(1.0, 0.0)
    with pytest.raises(ValueError):
        epsilon_from_mu(-1.0, 1e-5)


# --------------------------------------------------------------------------------------------------
# gaussian_fit_epsilon / gaussian_dp_mu
# --------------------------------------------------------------------------------------------------


def _exact_sample(rng: np.random.Generator, n: int, *, mean: float, sd: float) -> np.ndarray:
    """n points whose sample mean and ddof=1 standard deviation are exactly ``mean`` and ``sd``."""
    z = rng.standard_normal(n)
    return mean + sd * (z - z.mean()) / z.std(ddof=1)


def _bf_profile(eps: float, *, m1: float, s1: float, m0: float, s0: float) -> float:
    """max over both orders of ∫ (p − e^ε q)_+ dx on a fine grid: the sup over *all* events S.

    No shape of the optimal set is assumed.
    """
    x = np.linspace(-60.0, 60.0, 1_200_001)
    p = stats.norm.pdf(x, m1, s1)
    q = stats.norm.pdf(x, m0, s0)
    w = math.exp(eps)
    return max(
        float(np.trapezoid(np.maximum(p - w * q, 0.0), x)), float(np.trapezoid(np.maximum(q - w * p, 0.0), x))
    )


@pytest.mark.parametrize(("mu", "rel"), [(0.5, 0.10), (1.0, 0.05), (2.0, 0.05), (4.0, 0.05)])
def test_gaussian_fit_recovers_gaussian_mechanism_from_samples(mu: float, rel: float) -> None:
    # The fit estimates σ_in and σ_out separately; any sampling difference between them (SE ≈ 0.2 % here)
    # makes the likelihood ratio unbounded in a tail and raises ε, most visibly at small μ and small δ.
    # Over 20 seeds the relative error had max 4.8 % (μ = 0.5), 2.7 % (1), 1.7 % (2), 1.1 % (4); this seed
    # draws σ̂_in/σ̂_out = 1.0074 (≈ 3 SE) and gives +6 % at μ = 0.5, hence 10 % there.
    rng = np.random.default_rng(1234)
    n = 200_000
    x_in, x_out = rng.normal(mu, 1.0, n), rng.normal(0.0, 1.0, n)
    delta = 1e-5
    expected = epsilon_from_mu(mu, delta)
    assert gaussian_fit_epsilon(x_in, x_out, delta=delta) == pytest.approx(expected, rel=rel)
    assert gaussian_dp_mu(x_in, x_out) == pytest.approx(mu, abs=0.02)  # SE of the difference is ~0.0045


def test_gaussian_fit_equal_variance_is_exactly_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    for mu, sd, delta in [(1.0, 1.0, 1e-5), (3.0, 2.0, 1e-3), (0.2, 0.5, 1e-6)]:
        a, b = _exact_sample(rng, 50, mean=7.0 + mu, sd=sd), _exact_sample(rng, 80, mean=7.0, sd=sd)
        assert gaussian_dp_mu(a, b) == pytest.approx(mu / sd, rel=1e-10)
        expected = epsilon_from_mu(mu / sd, delta)
        assert gaussian_fit_epsilon(a, b, delta=delta) == pytest.approx(expected, rel=1e-6)
        assert gaussian_fit_epsilon(b, a, delta=delta) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("m1", "s1", "m0", "s0", "delta"),
    [
        (1.5, 1.5, 0.0, 1.0, 1e-5),  # σ_in > σ_out: optimal set is the complement of an interval
        (1.0, 0.6, 0.0, 1.0, 1e-5),  # σ_in < σ_out: the reverse direction needs the interval
        (0.3, 1.1, 0.0, 1.0, 1e-3),  # small shift, mild variance difference
    ],
)
def test_gaussian_fit_unequal_variances_matches_brute_force(
    *, m1: float, s1: float, m0: float, s0: float, delta: float
) -> None:
    rng = np.random.default_rng(7)
    e = gaussian_fit_epsilon(
        _exact_sample(rng, 100, mean=m1, sd=s1), _exact_sample(rng, 100, mean=m0, sd=s0), delta=delta
    )
    # ε is where the brute-force profile crosses δ: profile(ε) = δ (0.1 %), profile(0.99 ε) > δ
    assert _bf_profile(e, m1=m1, s1=s1, m0=m0, s0=s0) == pytest.approx(delta, rel=1e-3)
    assert _bf_profile(0.99 * e, m1=m1, s1=s1, m0=m0, s0=s0) > delta
    # unequal variances leak more than equal ones with the larger σ
    assert e >= epsilon_from_mu(abs(m1 - m0) / max(s1, s0), delta)


def test_gaussian_fit_degenerate_inputs() -> None:
    assert gaussian_fit_epsilon([1.0, 1.0], [1.0, 1.0], delta=1e-5) == 0.0
    assert gaussian_fit_epsilon([1.0, 1.0], [0.0, 2.0], delta=1e-5) == math.inf
    with pytest.raises(ValueError):
        gaussian_fit_epsilon([1.0], [0.0, 2.0], delta=1e-5)
    with pytest.raises(ValueError):
        gaussian_fit_epsilon([1.0, 2.0], [0.0, float("nan")], delta=1e-5)


# --------------------------------------------------------------------------------------------------
# one-run lower bound
# --------------------------------------------------------------------------------------------------


def _bf_grid(m: int) -> list[int]:
    ks = {0}
    j = 0
    while (k := math.floor(m / 2**j + 0.5)) >= 1:
        ks.add(k)
        j += 1
    return sorted(ks)


def test_one_run_perfect_separation_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    m = 1000
    z = _membership(rng, m)
    s = np.where(z, 1.0 + rng.random(m), rng.random(m))  # every in-score above every out-score
    s_in, s_out = s[z], s[~z]
    b = one_run_epsilon_lower_bound(s_in, s_out)
    assert isinstance(b, OneRunBound)
    assert b.epsilon_lower > 3.0
    # Bonferroni: the search grid has K pairs and each is tested at 0.05 / K
    grid = _bf_grid(m)
    pairs = [(a, c) for a in grid for c in grid if 1 <= a + c <= m]
    assert b.pairs_tried == len(pairs)
    beta = 0.05 / len(pairs)
    assert b.correct == _bf_correct(s_in, s_out, k_plus=b.k_plus, k_minus=b.k_minus)
    assert b.guesses == b.k_plus + b.k_minus
    assert b.epsilon_lower == pytest.approx(_bf_eps_pure(r=b.guesses, v=b.correct, beta=beta), abs=1e-8)
    # and it is the best pair of the grid (brute force over all pairs)
    best = max(
        _bf_eps_pure(r=a + c, v=_bf_correct(s_in, s_out, k_plus=a, k_minus=c), beta=beta) for a, c in pairs
    )
    assert b.epsilon_lower == pytest.approx(best, abs=1e-8)
    # explicit (k₊, k₋): one test at the full level, all m guesses correct, q(ε̂)^m = 0.05
    e = one_run_epsilon_lower_bound(s_in, s_out, k_plus=s_in.size, k_minus=s_out.size)
    assert (e.pairs_tried, e.correct, e.guesses) == (1, m, m)
    q = 0.05 ** (1 / m)
    assert e.epsilon_lower == pytest.approx(math.log(q / (1 - q)), abs=1e-8)
    assert e.epsilon_lower > b.epsilon_lower  # no multiple-testing penalty, more guesses


def test_one_run_large_epsilon_is_stable() -> None:
    # 20 000 perfectly separated canaries guessed at once: ε̂ = logit(0.05^(1/m)) ≈ 8.8; also the cap
    m = 20_000
    e = one_run_epsilon_lower_bound(np.arange(m // 2) + m, np.arange(m // 2), k_plus=m // 2, k_minus=m // 2)
    q = 0.05 ** (1 / m)
    assert e.epsilon_lower == pytest.approx(math.log(q / (1 - q)), abs=1e-6)
    assert math.isfinite(e.epsilon_lower)


def test_one_run_no_leakage_false_alarm_rate() -> None:
    hits = 0
    for seed in range(50):
        rng = np.random.default_rng(100 + seed)
        z = _membership(rng, 1000)
        s = rng.standard_normal(1000)  # scores independent of membership
        hits += one_run_epsilon_lower_bound(s[z], s[~z]).epsilon_lower > 0.0
    assert hits / 50 <= 0.15  # nominal ≤ 0.05


def test_one_run_ties_do_not_leak_membership() -> None:
    # constant scores: any label-aware tie-break would "find" the split; ties go against the auditor
    b = one_run_epsilon_lower_bound(np.zeros(500), np.zeros(500))
    assert b.epsilon_lower == 0.0
    hits = 0
    for seed in range(30):  # coarse discrete scores from one distribution
        rng = np.random.default_rng(seed)
        z = _membership(rng, 1000)
        s = rng.integers(0, 3, 1000).astype(float)
        hits += one_run_epsilon_lower_bound(s[z], s[~z]).epsilon_lower > 0.0
    assert hits <= 3  # nominal ≤ 5 % per seed; worst-case tie-breaking makes it ~0 (observed: 0 of 30)


def test_one_run_randomized_response_validity_and_power() -> None:
    eps_true, m, trials = 1.0, 1000, 200
    q = _sigmoid(eps_true)
    rng = np.random.default_rng(2024)
    out = np.empty(trials)
    for t in range(trials):
        z = _membership(rng, m)
        bit = np.where(rng.random(m) < q, z, ~z)  # ε-DP randomized response of each canary's membership
        s = bit + 0.5 * rng.random(m)  # post-processing with independent noise: still ε-DP, no ties
        out[t] = one_run_epsilon_lower_bound(s[z], s[~z]).epsilon_lower
    assert np.mean(out <= eps_true) >= 0.90  # nominal ≥ 0.95 (Bonferroni makes it higher)
    assert np.median(out) > 0.5  # and the bound is not vacuous


@pytest.mark.parametrize("delta", [1e-7, 1e-6, 1e-5])
def test_one_run_delta_positive_is_not_larger_and_matches_the_theorem(delta: float) -> None:
    rng = np.random.default_rng(5)
    m = 1000
    z = _membership(rng, m)
    bit = np.where(rng.random(m) < _sigmoid(3.0), z, ~z)
    s = bit + 0.5 * rng.random(m)
    pure = one_run_epsilon_lower_bound(s[z], s[~z])
    approx = one_run_epsilon_lower_bound(s[z], s[~z], delta=delta)
    assert approx.delta == delta and pure.delta == 0.0
    assert 0.0 < approx.epsilon_lower <= pure.epsilon_lower
    # at the reported pair, the literal (ε, δ) p-value rejects at ε̂ and not 0.01 above it (grid step)
    beta = 0.05 / approx.pairs_tried
    r, v = approx.guesses, approx.correct
    assert _bf_p_value(approx.epsilon_lower, r=r, v=v, m=m, delta=delta) <= beta
    assert _bf_p_value(approx.epsilon_lower + 0.01 + 1e-9, r=r, v=v, m=m, delta=delta) > beta
    # fixed guess set: same comparison, no search
    assert (
        one_run_epsilon_lower_bound(s[z], s[~z], delta=delta, k_plus=250, k_minus=250).epsilon_lower
        <= one_run_epsilon_lower_bound(s[z], s[~z], k_plus=250, k_minus=250).epsilon_lower
    )


def test_one_run_separated_delta_positive() -> None:
    s_in, s_out = np.arange(500) + 1000.0, np.arange(500) * 1.0
    pure = one_run_epsilon_lower_bound(s_in, s_out)
    for delta in (1e-8, 1e-5, 1e-3):
        assert one_run_epsilon_lower_bound(s_in, s_out, delta=delta).epsilon_lower <= pure.epsilon_lower
    # 2mδ ≥ 1: the δ term alone exceeds any β, nothing can be concluded
    assert one_run_epsilon_lower_bound(s_in, s_out, delta=0.01).epsilon_lower == 0.0
    # the δ term grows with m, so a moderate δ already costs most of the bound
    assert one_run_epsilon_lower_bound(s_in, s_out, delta=1e-4).epsilon_lower < 0.8 * pure.epsilon_lower


def test_one_run_is_invariant_to_input_order_and_validates() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 300)
    r1 = one_run_epsilon_lower_bound(a, b)
    r2 = one_run_epsilon_lower_bound(rng.permutation(a), rng.permutation(b))
    assert r1 == r2
    with pytest.raises(ValueError):
        one_run_epsilon_lower_bound(a, b, k_plus=400, k_minus=300)
    with pytest.raises(ValueError):
        one_run_epsilon_lower_bound(a, b, k_plus=0, k_minus=0)
    with pytest.raises(ValueError):
        one_run_epsilon_lower_bound(a, b, delta=-1e-5)
    with pytest.raises(ValueError):
        one_run_epsilon_lower_bound(a, b, confidence=1.0)


# --------------------------------------------------------------------------------------------------
# auc / null_cosine_std
# --------------------------------------------------------------------------------------------------


def test_auc() -> None:
    rng = np.random.default_rng(11)
    assert auc(rng.random(100) + 1.0, rng.random(100)) == 1.0
    assert auc(rng.random(100), rng.random(100) + 1.0) == 0.0
    assert auc(rng.standard_normal(10_000), rng.standard_normal(10_000)) == pytest.approx(0.5, abs=0.05)
    assert auc(np.full(10, 3.0), np.full(7, 3.0)) == 0.5
    # ties count ½: brute force over all pairs on small integer scores
    a, b = rng.integers(0, 4, 40), rng.integers(0, 4, 30)
    brute = (np.sum(a[:, None] > b[None, :]) + 0.5 * np.sum(a[:, None] == b[None, :])) / (a.size * b.size)
    assert auc(a, b) == pytest.approx(brute, abs=1e-12)


def test_null_cosine_std() -> None:
    assert null_cosine_std(4) == 0.5
    assert null_cosine_std(1) == 1.0
    rng = np.random.default_rng(0)
    dim = 64
    u = rng.standard_normal((20_000, dim))
    cos = u[:, 0] / np.linalg.norm(u, axis=1)  # cosine with e₁ of a uniform direction
    assert np.std(cos) == pytest.approx(null_cosine_std(dim), rel=0.03)  # SE of the std ≈ 0.5 %
    with pytest.raises(ValueError):
        null_cosine_std(0)
