"""Statistics for empirical privacy auditing: ε lower bounds and ε estimates from canary scores.

Every function takes the scores of the *included* canaries (``scores_in``) and of the *excluded* ones
(``scores_out``); a higher score means "more likely included". Nothing here trains or attacks a model:
the module is pure numpy/scipy and deterministic.

* :func:`one_run_epsilon_lower_bound` — a statistically valid lower bound on ε from one training run
  (Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023).
* :func:`gaussian_fit_epsilon`, :func:`gaussian_dp_mu`, :func:`epsilon_from_mu` — the Gaussian-fit ε
  *estimate* (not a bound) of Andrew, Chien, Kairouz, Oh, Oprea, McMahan, Suriyakumar, "One-shot Empirical
  Privacy Estimation for Federated Learning", ICLR 2024, with the Gaussian-mechanism privacy profile of
  Balle & Wang, "Improving the Gaussian Mechanism for Differential Privacy", ICML 2018.
* :func:`auc` — ROC AUC of the membership scores (Mann-Whitney U; Hanley & McNeil 1982).
* :func:`null_cosine_std` — the closed-form null of Andrew et al.'s cosine statistic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

__all__ = [
    "OneRunBound",
    "auc",
    "epsilon_from_mu",
    "gaussian_dp_mu",
    "gaussian_fit_epsilon",
    "null_cosine_std",
    "one_run_epsilon_lower_bound",
]

#: Upper end of the ε search of the one-run bound; a bound this large is reported as EPS_MAX.
EPS_MAX = 50.0
#: Bisection steps on [0, EPS_MAX] (50 / 2**60 is far below double precision of ε).
_BISECT_STEPS = 60
#: The δ > 0 one-run bound lives on the fixed grid ε ∈ {0, 0.01, 0.02, …} (see
#: :func:`_last_grid_index_below_crossing`).
_DELTA_GRID_PER_UNIT = 100
#: Cells of one (grid points × window) block when evaluating the δ > 0 p-value.
_BLOCK_CELLS = 2_000_000


# --------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------


def _scores(x: ArrayLike, name: str, *, min_size: int = 1) -> NDArray[np.float64]:
    """``x`` as a finite 1-D float array with at least ``min_size`` entries (else ``ValueError``)."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} score(s), got {a.size}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite scores")
    return a


def _check_delta(delta: float, *, allow_zero: bool) -> float:
    d = float(delta)
    ok = (0.0 <= d < 1.0) if allow_zero else (0.0 < d < 1.0)
    if not ok:
        raise ValueError(f"delta must be in {'[0, 1)' if allow_zero else '(0, 1)'}, got {delta!r}")
    return d


# --------------------------------------------------------------------------------------------------
# one-run lower bound (Steinke, Nasr, Jagielski 2023)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OneRunBound:
    """Result of :func:`one_run_epsilon_lower_bound` (Steinke, Nasr, Jagielski, NeurIPS 2023).

    Attributes
    ----------
    epsilon_lower
        ε̂: with probability ≥ ``confidence`` over the canaries' random inclusion, the mechanism is not
        (ε, ``delta``)-DP for any ε < ε̂. ``0.0`` when nothing can be concluded.
    confidence
        Family-wise confidence level of the whole procedure (after the Bonferroni split).
    k_plus, k_minus
        The number of highest-scoring canaries guessed "in" and of lowest-scoring guessed "out" by the
        reported guess set.
    correct
        v: correct guesses among them.
    guesses
        r = k_plus + k_minus.
    delta
        The δ of the null hypothesis (ε, δ)-DP that was tested.
    pairs_tried
        Number of (k₊, k₋) pairs searched; each was tested at level (1 − confidence) / pairs_tried.
    """

    epsilon_lower: float
    confidence: float
    k_plus: int
    k_minus: int
    correct: int
    guesses: int
    delta: float
    pairs_tried: int = 1


def _k_grid(m: int) -> NDArray[np.int64]:
    """Candidate guess counts: ``{0} ∪ {round(m / 2**j) : j ≥ 0}`` (so m, m/2, m/4, …, 1).

    m/2 is where a perfect auditor would stop (half the canaries are expected to be in).

    >>> _k_grid(10).tolist()
    [0, 1, 3, 5, 10]
    """
    ks = {0}
    j = 0
    while (k := math.floor(m / 2**j + 0.5)) >= 1:
        ks.add(k)
        j += 1
    return np.array(sorted(ks), dtype=np.int64)


def _guess_pairs(
    m: int, *, k_plus: int | None, k_minus: int | None
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The (k₊, k₋) pairs to try: the given values, or the :func:`_k_grid` for the ``None`` ones."""
    for name, k in (("k_plus", k_plus), ("k_minus", k_minus)):
        if k is not None and not (isinstance(k, (int, np.integer)) and 0 <= k <= m):
            raise ValueError(f"{name} must be an integer in [0, m={m}], got {k!r}")
    grid = _k_grid(m)
    kp = grid if k_plus is None else np.array([k_plus], dtype=np.int64)
    km = grid if k_minus is None else np.array([k_minus], dtype=np.int64)
    a, b = (x.reshape(-1) for x in np.meshgrid(kp, km, indexing="ij"))
    keep = (a + b <= m) & (a + b > 0)
    if not keep.any():
        raise ValueError(f"k_plus + k_minus must be in [1, m={m}], got k_plus={k_plus}, k_minus={k_minus}")
    return a[keep], b[keep]


def _correct_counts(
    s_in: NDArray[np.float64],
    s_out: NDArray[np.float64],
    *,
    k_plus: NDArray[np.int64],
    k_minus: NDArray[np.int64],
) -> NDArray[np.int64]:
    """Correct guesses v for each (k₊, k₋) when the top k₊ are guessed in and the bottom k₋ out.

    Ties in the score are broken *against* the auditor (among equal scores, excluded canaries count as
    higher), so v is never larger than under any tie-break that ignores membership; the bound stays
    valid for discrete scores.
    """
    scores = np.concatenate([s_in, s_out])
    is_in = np.concatenate([np.ones(s_in.size, np.int64), np.zeros(s_out.size, np.int64)])
    order = np.lexsort((1 - is_in, scores))  # ascending score; among ties: in first, out last
    cum_in = np.concatenate([[0], np.cumsum(is_in[order])])
    m = scores.size
    top_in = cum_in[m] - cum_in[m - k_plus]
    bottom_out = k_minus - cum_in[k_minus]
    return (top_in + bottom_out).astype(np.int64)


def _tail_pure(
    eps: NDArray[np.float64], *, r: NDArray[np.int64], v: NDArray[np.int64]
) -> NDArray[np.float64]:
    """P[Binomial(r, e^ε / (1 + e^ε)) ≥ v], computed as P[Binomial(r, 1/(1 + e^ε)) ≤ r − v].

    Working with the probability of a *wrong* guess, ``expit(-ε)``, keeps it exact for large ε where
    ``expit(ε)`` rounds to 1.
    """
    # special.bdtr is scipy.stats.binom.cdf without the per-call overhead
    return np.asarray(special.bdtr(r - v, r, special.expit(-eps)), dtype=np.float64)


def _p_value_approx(eps: NDArray[np.float64], *, r: int, v: int, m: int, delta: float) -> NDArray[np.float64]:
    """Steinke et al.'s (ε, δ) p-value at each ε of ``eps`` (one (r, v) pair).

    ``P[Bin(r,q) ≥ v] + 2mδ · max_{1≤i≤v} P[v−i ≤ Bin(r,q) < v] / i``, with q = e^ε/(1+e^ε), capped at 1.
    """
    f = _tail_pure(eps, r=np.full(eps.shape, r), v=np.full(eps.shape, v))
    if v == 0:
        return np.ones_like(f)
    # pmf of Bin(r, q) at k = v-1, v-2, ..., 0, via the wrong-guess count r - k ~ Bin(r, 1-q)
    wrong = r - np.arange(v - 1, -1, -1)
    pmf = stats.binom.pmf(wrong[None, :], r, special.expit(-eps)[:, None])
    window = np.cumsum(pmf, axis=1) / np.arange(1, v + 1)[None, :]
    return np.asarray(np.minimum(1.0, f + 2.0 * m * delta * window.max(axis=1)), dtype=np.float64)


def _bisect_pure(r: NDArray[np.int64], v: NDArray[np.int64], *, beta: float) -> NDArray[np.float64]:
    """Largest ε ∈ [0, EPS_MAX] with P[Bin(r, p(ε)) ≥ v] ≤ β, per pair (0 where even ε = 0 fails).

    The tail is nondecreasing in ε (Binomial is stochastically increasing in its success probability), so
    the set of rejected ε is an interval [0, ε̂] and bisection finds its end.
    """
    lo = np.zeros(r.shape)
    hi = np.full(r.shape, EPS_MAX)
    ok0 = _tail_pure(lo, r=r, v=v) <= beta
    ok_max = _tail_pure(hi, r=r, v=v) <= beta
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        good = _tail_pure(mid, r=r, v=v) <= beta
        lo = np.where(good, mid, lo)
        hi = np.where(good, hi, mid)
    return np.where(ok_max, EPS_MAX, np.where(ok0, lo, 0.0))


def _last_grid_index_below_crossing(
    p_value: Callable[[NDArray[np.float64]], NDArray[np.float64]], *, beta: float, n: int, block: int
) -> int:
    """Largest j < n with p(g_i) ≤ β for *every* i ≤ j, where g_i = i / _DELTA_GRID_PER_UNIT; −1 if none.

    This needs no monotonicity of p in ε and is valid because the grid is fixed in advance: if the true
    ε* ≤ ε̂ = g_j, the smallest grid point g* ≥ ε* is ≤ g_j, so p(g*) ≤ β was observed, and the mechanism
    is (g*, δ)-DP, which makes that event have probability ≤ β.
    """
    start, size = 0, 1
    while start < n:  # blocks of 1, 2, 4, … up to ``block`` points: cheap when ε = 0 already fails
        idx = np.arange(start, min(n, start + size))
        bad = np.flatnonzero(p_value(idx / _DELTA_GRID_PER_UNIT) > beta)
        if bad.size:
            return start + int(bad[0]) - 1
        start += size
        size = min(2 * size, block)
    return n - 1


def one_run_epsilon_lower_bound(
    scores_in: ArrayLike,
    scores_out: ArrayLike,
    *,
    delta: float = 0.0,
    confidence: float = 0.95,
    k_plus: int | None = None,
    k_minus: int | None = None,
) -> OneRunBound:
    r"""Lower bound on ε from one training run (Steinke, Nasr, Jagielski, NeurIPS 2023).

    Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023 (arXiv:2305.08846).
    The m = ``len(scores_in) + len(scores_out)`` canaries must each have been included independently with
    probability ½. The auditor guesses "in" for the ``k_plus`` highest scores, "out" for the ``k_minus``
    lowest and abstains on the rest; v of its r = k₊ + k₋ guesses are correct. Ties in the score are broken
    against the auditor (excluded canaries rank above included ones with the same score), which can only
    lower v.

    **δ = 0** (their main theorem for pure DP): under ε-DP the number of correct guesses is stochastically
    dominated by Binomial(r, q(ε)) with q(ε) = e^ε / (1 + e^ε). The p-value of "ε-DP" is
    ``P[Binomial(r, q(ε)) ≥ v]``, nondecreasing in ε, and ε̂ is the largest ε ∈ [0, 50] whose p-value is
    ≤ β = 1 − confidence, found by bisection (exact binomial tails, ``scipy.special.bdtr``, written through
    the wrong-guess probability 1/(1 + e^ε), so large ε do not round q to 1).

    **δ > 0** (their general theorem for (ε, δ)-DP, Section 5; the same expression as the code in
    their Appendix D): the p-value of "(ε, δ)-DP" is

    .. math:: f(v) + 2 m \delta \max_{1 \le i \le v} \frac{f(v - i) - f(v)}{i},
              \qquad f(u) = P[\mathrm{Binomial}(r, q(\varepsilon)) \ge u].

    The extra term is at most 2mδ (each ratio is an average of binomial probabilities), so with
    2mδ ≳ β little or nothing can be concluded; note that it grows with the number m of *all* randomised
    canaries, not only with r. Because monotonicity in ε of this p-value is not proven, ε̂ is the largest
    point of a fixed grid {0, 0.01, 0.02, …} below the first grid point whose p-value exceeds β (never
    more than the δ = 0 value), which is valid without monotonicity; the result is a multiple of 0.01.

    **Choice of (k₊, k₋).** Given values are used as they are (one test, level β). Each ``None`` is
    searched over the grid {0, 1, …, m/4, m/2, m} (powers of two of m, rounded), subject to
    1 ≤ k₊ + k₋ ≤ m. Picking the best pair after looking at the scores is multiple testing, so each of the
    K pairs is tested at level β / K (Bonferroni): by the union bound the reported ε̂ exceeds the true ε
    with probability ≤ β. K is returned as ``pairs_tried``.

    Parameters
    ----------
    scores_in, scores_out
        1-D scores of the included and of the excluded canaries (higher = more likely included).
    delta
        δ of the null hypothesis (ε, δ)-DP, in [0, 1).
    confidence
        1 − β, in (0, 1).
    k_plus, k_minus
        Number of "in" / "out" guesses, or ``None`` to search (see above).

    Returns
    -------
    OneRunBound
        ε̂ (``epsilon_lower``, 0.0 when nothing can be concluded, at most 50) and the guess set behind it.

    Examples
    --------
    Ten canaries, perfectly separated, all guessed (v = r = 10): the p-value of ε-DP is q(ε)¹⁰, and
    q(ε̂)¹⁰ = 0.05 gives ε̂ = logit(0.05^0.1) ≈ 1.052.

    >>> b = one_run_epsilon_lower_bound([5, 6, 7, 8, 9], [0, 1, 2, 3, 4], k_plus=5, k_minus=5)
    >>> (b.correct, b.guesses, round(b.epsilon_lower, 3))
    (10, 10, 1.052)

    Scores that ignore membership give no evidence:

    >>> one_run_epsilon_lower_bound([0, 1, 2, 3], [0, 1, 2, 3]).epsilon_lower
    0.0
    """
    s_in = _scores(scores_in, "scores_in", min_size=0)
    s_out = _scores(scores_out, "scores_out", min_size=0)
    m = s_in.size + s_out.size
    if m == 0:
        raise ValueError("no canaries: scores_in and scores_out are both empty")
    d = _check_delta(delta, allow_zero=True)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")

    kp, km = _guess_pairs(m, k_plus=k_plus, k_minus=k_minus)
    v = _correct_counts(s_in, s_out, k_plus=kp, k_minus=km)
    r = kp + km
    n_pairs = int(kp.size)
    beta = (1.0 - confidence) / n_pairs

    eps0 = _bisect_pure(r, v, beta=beta)
    if d == 0.0:
        eps = eps0
    else:
        # Branch and bound: the δ > 0 bound of a pair never exceeds its δ = 0 bound, and a pair whose
        # p-value already fails at the grid point after the best index so far cannot beat it.
        eps = np.zeros_like(eps0)
        best_j = -1
        for i in np.argsort(-eps0, kind="stable"):
            n = math.floor(float(eps0[i]) * _DELTA_GRID_PER_UNIT + 1e-9) + 1  # grid points ≤ the δ = 0 bound
            if n <= best_j + 1:
                break
            ri, vi = int(r[i]), int(v[i])

            def p_value(grid: NDArray[np.float64], ri: int = ri, vi: int = vi) -> NDArray[np.float64]:
                return _p_value_approx(grid, r=ri, v=vi, m=m, delta=d)

            if best_j >= 0 and p_value(np.array([(best_j + 1) / _DELTA_GRID_PER_UNIT]))[0] > beta:
                continue
            block = max(1, _BLOCK_CELLS // max(1, vi))
            j = _last_grid_index_below_crossing(p_value, beta=beta, n=n, block=block)
            eps[i] = max(0, j) / _DELTA_GRID_PER_UNIT
            best_j = max(best_j, j)

    # best ε̂; among equal ε̂ (e.g. all 0) the pair with the smallest δ = 0 p-value at ε = 0
    p_at_0 = _tail_pure(np.zeros(r.shape), r=r, v=v)
    j = int(np.lexsort((p_at_0, -eps))[0])
    return OneRunBound(
        epsilon_lower=float(eps[j]),
        confidence=float(confidence),
        k_plus=int(kp[j]),
        k_minus=int(km[j]),
        correct=int(v[j]),
        guesses=int(r[j]),
        delta=d,
        pairs_tried=n_pairs,
    )


# --------------------------------------------------------------------------------------------------
# Gaussian fit (Andrew et al. 2024) and the Gaussian privacy profile (Balle & Wang 2018)
# --------------------------------------------------------------------------------------------------


def _gaussian_delta(eps: float, mu: float) -> float:
    """δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) of the μ-Gaussian mechanism, evaluated in log space."""
    if mu == 0.0:
        return 0.0
    l1 = float(stats.norm.logcdf(-eps / mu + mu / 2))
    l2 = eps + float(stats.norm.logcdf(-eps / mu - mu / 2))
    if l1 == -math.inf:
        return 0.0
    return max(0.0, math.exp(l1) * -math.expm1(l2 - l1))


def _smallest_eps(profile: Callable[[float], float], delta: float) -> float:
    """Smallest ε ≥ 0 with ``profile(ε) ≤ delta`` for a continuous nonincreasing privacy profile."""
    if profile(0.0) <= delta:
        return 0.0
    hi = 1.0
    while profile(hi) > delta:
        hi *= 2.0
        if hi > 1e6:
            return math.inf
    lo = hi / 2.0 if hi > 1.0 else 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if profile(mid) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


def epsilon_from_mu(mu: float, delta: float) -> float:
    """ε(δ) of the Gaussian mechanism with sensitivity / noise σ = μ (μ-GDP), by bisection.

    Inverts the exact privacy profile of Balle & Wang, "Improving the Gaussian Mechanism for Differential
    Privacy: Analytical Calibration and Optimal Denoising", ICML 2018 (Theorem 8):
    ``δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)``, which is continuous and decreasing in ε. This is the
    ε that Andrew et al. (ICLR 2024) report for an estimated μ.

    Parameters
    ----------
    mu
        Separation μ ≥ 0 of the two Gaussians in units of their common standard deviation.
    delta
        Target δ in (0, 1).

    Returns
    -------
    float
        The smallest ε ≥ 0 with δ(ε) ≤ ``delta`` (``inf`` for μ = ∞).

    Examples
    --------
    >>> round(epsilon_from_mu(1.0, 1e-5), 3)
    4.377
    >>> epsilon_from_mu(0.0, 1e-5)
    0.0
    """
    d = _check_delta(delta, allow_zero=False)
    m = float(mu)
    if not m >= 0.0:
        raise ValueError(f"mu must be >= 0, got {mu!r}")
    if math.isinf(m):
        return math.inf
    return _smallest_eps(lambda e: _gaussian_delta(e, m), d)


def _log_mass_between(lo: float, hi: float, *, mean: float, sd: float) -> float:
    """log P[lo < X < hi] for X ~ N(mean, sd²), accurate in both tails."""
    a, b = (lo - mean) / sd, (hi - mean) / sd
    if a >= b:
        return -math.inf
    if a > 0.0:  # upper tail: sf(a) − sf(b)
        la, lb = float(stats.norm.logsf(a)), float(stats.norm.logsf(b))
    elif b < 0.0:  # lower tail: cdf(b) − cdf(a)
        la, lb = float(stats.norm.logcdf(b)), float(stats.norm.logcdf(a))
    else:  # a ≤ 0 ≤ b: the mass is not in a far tail, so a plain difference is accurate
        mass = float(stats.norm.cdf(b) - stats.norm.cdf(a))
        return math.log(mass) if mass > 0.0 else -math.inf
    if la == -math.inf:
        return -math.inf
    return la + math.log(-math.expm1(lb - la)) if lb < la else -math.inf


def _log_mass_outside(lo: float, hi: float, *, mean: float, sd: float) -> float:
    """log P[X < lo or X > hi] for X ~ N(mean, sd²)."""
    return float(np.logaddexp(stats.norm.logcdf((lo - mean) / sd), stats.norm.logsf((hi - mean) / sd)))


def _hockey_stick(eps: float, *, mp: float, sp: float, mq: float, sq: float) -> float:
    """sup_S P(S) − e^ε Q(S) for P = N(mp, sp²), Q = N(mq, sq²), sp, sq > 0.

    The supremum is attained on S = {x : log p(x) − log q(x) > ε} = {a x² + b x + c > 0} with
    a = 1/(2sq²) − 1/(2sp²), b = mp/sp² − mq/sq², c = mq²/(2sq²) − mp²/(2sp²) + log(sq/sp) − ε:
    a half-line (a = 0), an interval (a < 0) or the complement of one (a > 0).
    """
    a = 0.5 / sq**2 - 0.5 / sp**2
    b = mp / sp**2 - mq / sq**2
    c = 0.5 * mq**2 / sq**2 - 0.5 * mp**2 / sp**2 + math.log(sq / sp) - eps
    if a == 0.0:
        if b == 0.0:  # P = Q
            return 0.0
        x0 = -c / b
        lo, hi = (x0, math.inf) if b > 0 else (-math.inf, x0)
        lp, lq = _log_mass_between(lo, hi, mean=mp, sd=sp), _log_mass_between(lo, hi, mean=mq, sd=sq)
    else:
        disc = b * b - 4.0 * a * c
        if disc <= 0.0:  # S is empty (a < 0) or all of R but a point (a > 0, impossible for ε ≥ 0)
            return 0.0
        t = -0.5 * (b + math.copysign(math.sqrt(disc), b))  # stable roots t/a and c/t
        r1, r2 = sorted((t / a, c / t))
        if a < 0.0:
            lp, lq = _log_mass_between(r1, r2, mean=mp, sd=sp), _log_mass_between(r1, r2, mean=mq, sd=sq)
        else:
            lp, lq = _log_mass_outside(r1, r2, mean=mp, sd=sp), _log_mass_outside(r1, r2, mean=mq, sd=sq)
    if lp == -math.inf:
        return 0.0
    return max(0.0, math.exp(lp) * -math.expm1(min(0.0, eps + lq - lp)))


def _fit(x: NDArray[np.float64]) -> tuple[float, float]:
    return float(np.mean(x)), float(np.std(x, ddof=1))


def gaussian_fit_epsilon(scores_in: ArrayLike, scores_out: ArrayLike, *, delta: float) -> float:
    """ε(δ) of the two Gaussians fitted to the in- and out-scores (Andrew et al., ICLR 2024).

    Andrew, Chien, Kairouz, Oh, Oprea, McMahan, Suriyakumar, "One-shot Empirical Privacy Estimation for
    Federated Learning", ICLR 2024. Fits N(μ₁, σ₁²) to ``scores_in`` and N(μ₀, σ₀²) to ``scores_out``
    (sample mean and ``ddof=1`` standard deviation) and returns the smallest ε ≥ 0 with
    ``max(δ_{P₁‖P₀}(ε), δ_{P₀‖P₁}(ε)) ≤ delta``, where ``δ_{P‖Q}(ε) = sup_S P(S) − e^ε Q(S)`` is the
    hockey-stick divergence. Its optimal S is where the density ratio exceeds e^ε, for two Gaussians a
    half-line, an interval or the complement of one (roots of a quadratic), so the profile is exact.
    With σ₁ = σ₀ it is the Gaussian mechanism of :func:`epsilon_from_mu` with μ = |μ₁ − μ₀| / σ.

    This is an *estimate* under a Gaussian model of the scores, not a statistical lower bound. With
    unequal variances the likelihood ratio is unbounded in a tail, so ε(δ) grows quickly as δ → 0.

    Parameters
    ----------
    scores_in, scores_out
        1-D scores, at least two of each.
    delta
        Target δ in (0, 1).

    Returns
    -------
    float
        ε ≥ 0; ``inf`` if no ε ≤ 10⁶ reaches ``delta`` or if a fitted σ is 0 and the fits differ.

    Examples
    --------
    >>> round(gaussian_fit_epsilon([1.0, 3.0], [-1.0, 1.0], delta=1e-5), 3)  # μ₁−μ₀ = 2, σ = √2
    6.573
    >>> round(epsilon_from_mu(2 / 2**0.5, 1e-5), 3)
    6.573
    """
    d = _check_delta(delta, allow_zero=False)
    m1, s1 = _fit(_scores(scores_in, "scores_in", min_size=2))
    m0, s0 = _fit(_scores(scores_out, "scores_out", min_size=2))
    if s1 == 0.0 or s0 == 0.0:
        return 0.0 if (s1 == s0 and m1 == m0) else math.inf

    def profile(e: float) -> float:
        return max(_hockey_stick(e, mp=m1, sp=s1, mq=m0, sq=s0), _hockey_stick(e, mp=m0, sp=s0, mq=m1, sq=s1))

    return _smallest_eps(profile, d)


def gaussian_dp_mu(scores_in: ArrayLike, scores_out: ArrayLike) -> float:
    """μ = |μ₁ − μ₀| / σ_pooled of the in- vs out-scores (Andrew et al., ICLR 2024).

    Andrew, Chien, Kairouz, Oh, Oprea, McMahan, Suriyakumar, "One-shot Empirical Privacy Estimation for
    Federated Learning", ICLR 2024: the scores are modelled as two Gaussians of equal variance, i.e. a
    μ-GDP Gaussian mechanism (Dong, Roth, Su, "Gaussian Differential Privacy", JRSS-B 2022); feed μ to
    :func:`epsilon_from_mu`. σ_pooled² = ((n₁−1)s₁² + (n₀−1)s₀²) / (n₁ + n₀ − 2).

    Parameters
    ----------
    scores_in, scores_out
        1-D scores, at least two of each.

    Returns
    -------
    float
        μ ≥ 0 (``inf`` if the pooled σ is 0 and the means differ, 0 if both are 0 and equal).

    Examples
    --------
    >>> gaussian_dp_mu([1.0, 3.0], [-1.0, 1.0])  # means 2 and 0, pooled σ = √2
    1.414213562373095
    """
    a = _scores(scores_in, "scores_in", min_size=2)
    b = _scores(scores_out, "scores_out", min_size=2)
    (m1, s1), (m0, s0) = _fit(a), _fit(b)
    pooled = math.sqrt(((a.size - 1) * s1**2 + (b.size - 1) * s0**2) / (a.size + b.size - 2))
    diff = abs(m1 - m0)
    if pooled == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / pooled


# --------------------------------------------------------------------------------------------------
# AUC and the cosine null
# --------------------------------------------------------------------------------------------------


def auc(scores_in: ArrayLike, scores_out: ArrayLike) -> float:
    """ROC AUC of in- vs out-scores: P[S_in > S_out] + ½ P[S_in = S_out], from ranks.

    The Mann-Whitney U statistic divided by n₁n₀ (Mann & Whitney, Ann. Math. Stat. 1947; Hanley & McNeil,
    "The meaning and use of the area under a receiver operating characteristic (ROC) curve", Radiology
    1982): ``(Σ rank(in) − n₁(n₁+1)/2) / (n₁ n₀)`` with average ranks for ties, so a tie counts ½.

    Parameters
    ----------
    scores_in, scores_out
        1-D scores, at least one of each.

    Returns
    -------
    float
        AUC in [0, 1]; 1 means every included canary outscores every excluded one.

    Examples
    --------
    >>> auc([3, 4], [1, 2])
    1.0
    >>> auc([1, 2], [2, 3])  # pairs (1,2) (1,3) (2,2)=½ (2,3): ½ / 4
    0.125
    >>> auc([7, 7], [7])
    0.5
    """
    a = _scores(scores_in, "scores_in")
    b = _scores(scores_out, "scores_out")
    ranks = stats.rankdata(np.concatenate([a, b]))
    u = float(np.sum(ranks[: a.size])) - a.size * (a.size + 1) / 2.0
    return u / (a.size * b.size)


def null_cosine_std(dim: int) -> float:
    """1/√dim: std of the cosine between a fixed vector and a uniformly random direction in R^dim.

    The closed-form null of Andrew, Chien, Kairouz, Oh, Oprea, McMahan, Suriyakumar, "One-shot Empirical
    Privacy Estimation for Federated Learning", ICLR 2024: a canary direction drawn uniformly on the sphere
    and never inserted has cosine with the final model delta of mean 0 and variance exactly 1/dim (by
    symmetry E[cos²] = E[u₁²] = 1/dim for u uniform on the unit sphere), approximately N(0, 1/dim) for
    large dim.

    Parameters
    ----------
    dim
        Dimension ≥ 1 of the parameter space.

    Returns
    -------
    float
        ``1 / sqrt(dim)``.

    Examples
    --------
    >>> null_cosine_std(4)
    0.5
    """
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    return 1.0 / math.sqrt(int(dim))
