"""Min-Max, Min-Sum and AGR-tailored attacks (Shejwalkar & Houmansadr, "Manipulating the Byzantine:
Optimizing Model Poisoning Attacks and Defenses for Federated Learning", NDSS 2021).

Every attacker sends ``∇m = μ + γ·∇p``: the benign mean ``μ`` plus a scaled perturbation ``∇p``, one of

* ``"unit_vec"``: ``−μ/‖μ‖`` (inverse unit vector),
* ``"std"``: ``−σ`` (inverse coordinate-wise standard deviation),
* ``"sign"``: ``−sign(μ)`` (inverse sign).

``γ`` is the largest value meeting the attack's constraint (AGR-agnostic), found by the paper's
halving search (its Algorithm 1; ``γ_init = 10``, ``τ = 10⁻⁵`` and the initial step ``γ_init/2`` as in
the official code and FLPoison):

* Min-Max: ``max_i ‖∇m − ∇i‖ ≤ max_{i,j} ‖∇i − ∇j‖``;
* Min-Sum: ``Σ_i ‖∇m − ∇i‖² ≤ max_i Σ_j ‖∇i − ∇j‖²``;
* AGR-tailored (Sec. IV): maximise ``‖f_agr(∇m × f ∪ benign) − μ‖`` for a known aggregator
  ``f_agr`` (trimmed mean, median), or, for selection rules (Krum, Multi-Krum, Bulyan), the largest
  ``γ`` for which an oracle ("a malicious update is selected") holds.

``i, j`` range over the known updates ``benign``: the benign updates of the round (omniscient) or the
attackers' own honest updates (the paper's "unknown benign gradients" setting); the caller chooses.

The search (:func:`gamma_search`) starts at ``γ_init`` with step ``γ_init/2``, moves up by the step
after a success and down after a failure, halves the step, and stops once the next probe is within
``τ`` of the last success. Its probes stay in ``(0, 2·γ_init)``: the result is ``≈ 2·γ_init`` when every
probe succeeds (raise ``gamma_init`` then) and 0 when none does.

Choices and differences from the official code (which this module does not follow where the paper
says otherwise):

* The official Min-Sum compares with ``min_i Σ_j ‖∇i − ∇j‖²``; the paper (and FLPoison) use ``max_i``,
  as here.
* The official AGR-tailored code for trimmed mean / median counts a probe as a success when its
  deviation exceeds that of the *previous probe* (which may have failed), so it can end on a ``γ``
  worse than an earlier one; here a success must exceed the *best* deviation so far, so the returned
  ``γ`` is the best probe. The paper leaves the oracle of this objective unspecified.
* ``σ`` is the sample standard deviation (``torch.std``, as the official code).
* For the feasibility constraints, distances are evaluated from ``‖μ − ∇i‖²``, ``∇p·(μ − ∇i)`` and
  ``‖∇p‖²`` computed once, so a probe costs ``O(n)``, not ``O(n·d)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from attacks.poisoning._common import check_benign, gram, matvec, mean_std, rows_of, sq_distances

__all__ = [
    "Perturbation",
    "agr_tailored",
    "agr_tailored_gamma",
    "agr_tailored_oracle",
    "agr_tailored_oracle_gamma",
    "gamma_search",
    "min_max_gamma",
    "min_max_updates",
    "min_sum_gamma",
    "min_sum_updates",
    "perturbation_vector",
]

Perturbation = Literal["unit_vec", "std", "sign"]

_MAX_PROBES = 10_000


def _perturbation(mu: torch.Tensor, sd: torch.Tensor, kind: Perturbation) -> torch.Tensor:
    if kind == "unit_vec":
        norm = float(torch.linalg.vector_norm(mu))
        return -mu / norm if norm > 0 else torch.zeros_like(mu)
    if kind == "std":
        return -sd
    if kind == "sign":
        return -torch.sign(mu)
    raise ValueError(f"unknown perturbation {kind!r}; expected 'unit_vec', 'std' or 'sign'")


def perturbation_vector(benign: torch.Tensor, *, kind: Perturbation = "std") -> torch.Tensor:
    """The perturbation ``∇p`` (float64, ``(d,)``): ``−μ/‖μ‖`` (``"unit_vec"``; zero if ``μ = 0``),
    ``−σ`` (``"std"``) or ``−sign(μ)`` (``"sign"``), with ``μ``, ``σ`` the coordinate-wise mean and
    sample standard deviation of ``benign``.

    >>> perturbation_vector(torch.tensor([[3.0, 0.0], [3.0, 8.0]]), kind="unit_vec").tolist()
    [-0.6, -0.8]
    """
    check_benign(benign, num_malicious=0)
    mu, sd = mean_std(benign)
    return _perturbation(mu, sd, kind)


def gamma_search(success: Callable[[float], bool], *, gamma_init: float = 10.0, tol: float = 1e-5) -> float:
    """The binary search of Shejwalkar & Houmansadr (2021, Algorithm 1) for the largest successful ``γ``.

    ``γ ← γ_init``, ``step ← γ_init/2``, ``γ_succ ← 0``; while ``|γ_succ − γ| > τ``: if
    ``success(γ)`` then ``γ_succ ← γ``, ``γ ← γ + step``, else ``γ ← γ − step``; ``step ← step/2``.
    For a predicate true exactly on ``[0, γ*]`` with ``0 ≤ γ* < 2·γ_init`` the result is in
    ``[γ* − 2τ, γ*]``.

    Parameters
    ----------
    success : Callable[[float], bool]
        The oracle; called once per probe, in order (it may keep state, e.g. the best objective).
    gamma_init : float
        ``γ_init > 0``; probes stay in ``(0, 2·γ_init)``.
    tol : float
        ``τ > 0``.

    Returns
    -------
    float
        The last successful ``γ`` (0 if no probe succeeded).

    >>> round(gamma_search(lambda g: g <= 3.0), 4)
    3.0
    """
    if gamma_init <= 0 or tol <= 0:
        raise ValueError("gamma_init and tol must be > 0")
    gamma, step, succ = float(gamma_init), gamma_init / 2.0, 0.0
    for _ in range(_MAX_PROBES):
        if abs(succ - gamma) <= tol:
            break
        if success(gamma):
            succ = gamma
            gamma += step
        else:
            gamma -= step
        step /= 2.0
    return succ


class _Quadratics:
    """``‖μ + γ∇p − ∇i‖² = a_i + 2γ·b_i + γ²·c`` for every known update ``∇i``, and the pairwise squared
    distances of the known updates."""

    def __init__(self, benign: torch.Tensor, kind: Perturbation) -> None:
        self.mu, sd = mean_std(benign)
        self.p = _perturbation(self.mu, sd, kind)
        g = gram(benign)
        self.sq_dists = sq_distances(g)
        mu_dot = matvec(benign, self.mu)
        self.a = (torch.diagonal(g) - 2.0 * mu_dot + self.mu.square().sum()).clamp_min(0.0)
        self.b = (self.p @ self.mu) - matvec(benign, self.p)
        self.c = self.p.square().sum()

    def sq_dist_to(self, gamma: float) -> torch.Tensor:
        return self.a + 2.0 * gamma * self.b + gamma * gamma * self.c


def min_max_gamma(
    benign: torch.Tensor, *, perturbation: Perturbation = "std", gamma_init: float = 10.0, tol: float = 1e-5
) -> float:
    """``γ`` of the Min-Max attack: the largest ``γ`` (by :func:`gamma_search`) with
    ``max_i ‖μ + γ∇p − ∇i‖ ≤ max_{i,j} ‖∇i − ∇j‖`` over the rows of ``benign``."""
    check_benign(benign, num_malicious=0, min_rows=2)
    q = _Quadratics(benign, perturbation)
    bound = float(q.sq_dists.max())
    return gamma_search(
        lambda gamma: float(q.sq_dist_to(gamma).max()) <= bound, gamma_init=gamma_init, tol=tol
    )


def min_sum_gamma(
    benign: torch.Tensor, *, perturbation: Perturbation = "std", gamma_init: float = 10.0, tol: float = 1e-5
) -> float:
    """``γ`` of the Min-Sum attack: the largest ``γ`` (by :func:`gamma_search`) with
    ``Σ_i ‖μ + γ∇p − ∇i‖² ≤ max_i Σ_j ‖∇i − ∇j‖²`` over the rows of ``benign``."""
    check_benign(benign, num_malicious=0, min_rows=2)
    q = _Quadratics(benign, perturbation)
    bound = float(q.sq_dists.sum(dim=1).max())
    return gamma_search(
        lambda gamma: float(q.sq_dist_to(gamma).sum()) <= bound, gamma_init=gamma_init, tol=tol
    )


def _malicious(benign: torch.Tensor, num_malicious: int, gamma: float, kind: Perturbation) -> torch.Tensor:
    mu, sd = mean_std(benign)
    return rows_of(mu + gamma * _perturbation(mu, sd, kind), num_malicious, benign)


def min_max_updates(
    benign: torch.Tensor,
    *,
    num_malicious: int,
    perturbation: Perturbation = "std",
    gamma_init: float = 10.0,
    tol: float = 1e-5,
) -> torch.Tensor:
    """Min-Max malicious updates ``μ + γ∇p`` (Shejwalkar & Houmansadr, NDSS 2021), ``γ`` from
    :func:`min_max_gamma`.

    Parameters
    ----------
    benign : torch.Tensor
        ``(n_b, d)`` known updates (at least two).
    num_malicious : int
        Number of (identical) malicious updates to return.
    perturbation : {"unit_vec", "std", "sign"}
        ``∇p`` (see :func:`perturbation_vector`); the official release notebooks use ``"std"``.
    gamma_init, tol : float
        ``γ_init`` and ``τ`` of :func:`gamma_search`.

    Returns
    -------
    torch.Tensor
        ``(num_malicious, d)``.
    """
    check_benign(benign, num_malicious=num_malicious, min_rows=2)
    gamma = min_max_gamma(benign, perturbation=perturbation, gamma_init=gamma_init, tol=tol)
    return _malicious(benign, num_malicious, gamma, perturbation)


def min_sum_updates(
    benign: torch.Tensor,
    *,
    num_malicious: int,
    perturbation: Perturbation = "std",
    gamma_init: float = 10.0,
    tol: float = 1e-5,
) -> torch.Tensor:
    """Min-Sum malicious updates ``μ + γ∇p`` (Shejwalkar & Houmansadr, NDSS 2021), ``γ`` from
    :func:`min_sum_gamma`; parameters as :func:`min_max_updates`."""
    check_benign(benign, num_malicious=num_malicious, min_rows=2)
    gamma = min_sum_gamma(benign, perturbation=perturbation, gamma_init=gamma_init, tol=tol)
    return _malicious(benign, num_malicious, gamma, perturbation)


def _with_malicious(
    benign: torch.Tensor, num_malicious: int, mu: torch.Tensor, p: torch.Tensor, gamma: float
) -> torch.Tensor:
    return torch.cat([rows_of(mu + gamma * p, num_malicious, benign), benign], dim=0)


def agr_tailored_gamma(
    benign: torch.Tensor,
    *,
    num_malicious: int,
    agr: Callable[[torch.Tensor], torch.Tensor],
    perturbation: Perturbation = "std",
    gamma_init: float = 10.0,
    tol: float = 1e-5,
) -> float:
    """``γ`` of the AGR-tailored attack on an aggregator ``agr`` (Shejwalkar & Houmansadr, 2021, Sec. IV).

    Maximises the deviation ``‖agr([∇m × f; benign]) − μ‖`` by :func:`gamma_search`, a probe
    succeeding when its deviation is strictly larger than the best one so far (the first probe
    always succeeds).

    Parameters
    ----------
    benign : torch.Tensor
        ``(n_b, d)`` known updates (at least two).
    num_malicious : int
        ``f``, the copies of ``∇m`` put in front of ``benign`` for ``agr``.
    agr : Callable[[torch.Tensor], torch.Tensor]
        ``agr(updates) -> (d,) aggregate`` for an ``(f + n_b, d)`` update matrix (rows ``0 … f − 1``
        malicious); pass the server's real rule.
    perturbation, gamma_init, tol
        As :func:`min_max_updates`.
    """
    check_benign(benign, num_malicious=num_malicious, min_rows=2)
    mu, sd = mean_std(benign)
    p = _perturbation(mu, sd, perturbation)
    best = float("-inf")

    def improves(gamma: float) -> bool:
        nonlocal best
        agg = agr(_with_malicious(benign, num_malicious, mu, p, gamma))
        dev = float(torch.linalg.vector_norm(agg.to(device=mu.device, dtype=torch.float64) - mu))
        if dev > best:
            best = dev
            return True
        return False

    return gamma_search(improves, gamma_init=gamma_init, tol=tol)


def agr_tailored(
    benign: torch.Tensor,
    *,
    num_malicious: int,
    agr: Callable[[torch.Tensor], torch.Tensor],
    perturbation: Perturbation = "std",
    gamma_init: float = 10.0,
    tol: float = 1e-5,
) -> torch.Tensor:
    """AGR-tailored malicious updates ``μ + γ∇p`` against ``agr`` (Shejwalkar & Houmansadr, NDSS 2021),
    ``γ`` from :func:`agr_tailored_gamma` (the deviation objective of trimmed mean / median).

    Returns
    -------
    torch.Tensor
        ``(num_malicious, d)`` identical rows.
    """
    check_benign(benign, num_malicious=num_malicious, min_rows=2)
    if num_malicious == 0:
        return benign.new_empty(0, benign.shape[1])
    gamma = agr_tailored_gamma(
        benign,
        num_malicious=num_malicious,
        agr=agr,
        perturbation=perturbation,
        gamma_init=gamma_init,
        tol=tol,
    )
    return _malicious(benign, num_malicious, gamma, perturbation)


def agr_tailored_oracle_gamma(
    benign: torch.Tensor,
    *,
    num_malicious: int,
    oracle: Callable[[torch.Tensor], bool],
    perturbation: Perturbation = "std",
    gamma_init: float = 10.0,
    tol: float = 1e-5,
) -> float:
    """``γ`` of the AGR-tailored attack on a selection rule: the largest ``γ`` (by :func:`gamma_search`)
    for which ``oracle([∇m × f; benign])`` holds, e.g. "Krum selects a row ``< f``" (the paper's
    ``O_m`` for Krum, Multi-Krum and Bulyan)."""
    check_benign(benign, num_malicious=num_malicious, min_rows=2)
    mu, sd = mean_std(benign)
    p = _perturbation(mu, sd, perturbation)
    return gamma_search(
        lambda gamma: bool(oracle(_with_malicious(benign, num_malicious, mu, p, gamma))),
        gamma_init=gamma_init,
        tol=tol,
    )


def agr_tailored_oracle(
    benign: torch.Tensor,
    *,
    num_malicious: int,
    oracle: Callable[[torch.Tensor], bool],
    perturbation: Perturbation = "std",
    gamma_init: float = 10.0,
    tol: float = 1e-5,
) -> torch.Tensor:
    """AGR-tailored malicious updates ``μ + γ∇p`` against a selection rule, ``γ`` from
    :func:`agr_tailored_oracle_gamma`; ``(num_malicious, d)`` identical rows."""
    check_benign(benign, num_malicious=num_malicious, min_rows=2)
    if num_malicious == 0:
        return benign.new_empty(0, benign.shape[1])
    gamma = agr_tailored_oracle_gamma(
        benign,
        num_malicious=num_malicious,
        oracle=oracle,
        perturbation=perturbation,
        gamma_init=gamma_init,
        tol=tol,
    )
    return _malicious(benign, num_malicious, gamma, perturbation)
