"""Fang et al.'s local model poisoning attacks (Fang, Cao, Jia, Gong, "Local Model Poisoning Attacks to
Byzantine-Robust Federated Learning", USENIX Security 2020, arXiv:1911.11815).

The attack deviates the global model in the direction opposite to the one it would move in without
attack. ``s`` is that estimated *change direction*, ``s_j ∈ {−1, 0, 1}``; by default the sign of the
mean of the known updates (``direction`` overrides it, e.g. with the sign of the aggregate the server
would compute without attack).

*Attack on Krum* (Sec. 4): the first attacker sends ``w'_1 = w_Re − λ·s`` and the other ``c − 1``
attackers send copies of it (or points within a small ball around it), so that Krum selects ``w'_1``.
``λ`` starts at the paper's upper bound

    λ ≤ 1/((m − 2c − 1)√d) · min_{i benign} Σ_{l ∈ Γ̃_i} D(w_l, w_i) + 1/√d · max_{i benign} D(w_i, w_Re)

(``m`` workers, ``c`` attackers, ``Γ̃_i`` the ``m − c − 2`` benign models closest to ``w_i``, ``D`` the
Euclidean distance) and is halved until Krum selects a crafted model or ``λ`` falls below the
threshold ``10⁻⁵``. In update space (``Δ = w − w_Re``) the crafted update is ``−λ·s`` and
``D(w_i, w_Re) = ‖Δ_i‖``; Krum's distances are the same in both spaces.

*Attack on trimmed mean* (Sec. 4; the same attack is used against the median): with ``w_max,j`` /
``w_min,j`` the largest / smallest benign value of parameter ``j``, each attacker samples, uniformly
and independently per coordinate,

* ``s_j = −1``: in ``[w_max,j, b·w_max,j]`` if ``w_max,j > 0``, else in ``[w_max,j, w_max,j / b]``;
* ``s_j = +1``: in ``[w_min,j / b, w_min,j]`` if ``w_min,j > 0``, else in ``[b·w_min,j, w_min,j]``;

with ``b = 2``; so every malicious value lies beyond the benign extreme opposite to ``s``. With partial
knowledge the attacker estimates the mean ``μ_j`` and standard deviation ``σ_j`` from its own
before-attack models and samples in ``[μ_j + 3σ_j, μ_j + 4σ_j]`` (``s_j = −1``) or
``[μ_j − 4σ_j, μ_j − 3σ_j]`` (``s_j = +1``).

Choices and differences from public code:

* ``s_j = 0`` (a zero mean) is treated as ``+1``, as in the NDSS'21 re-implementation of Shejwalkar &
  Houmansadr (they branch on ``sign(mean gradient) > 0``, gradients having the opposite sign of
  updates).
* The paper applies the trimmed-mean rule to *model parameters*; re-implementations (Shejwalkar &
  Houmansadr, FLPoison) apply it to gradients/updates, which changes the intervals because of the
  ``b``-scaling. :func:`fang_trimmed_mean` applies it to the inputs as given, or to the models
  ``reference + Δ`` when the global model ``reference`` is passed (the paper's form).
* The Krum bound follows the paper's ``|Γ̃_i| = m − c − 2``; Shejwalkar & Houmansadr's
  ``compute_lambda_fang`` (NDSS'21 code) sums over ``m − 2c − 2`` neighbours instead, measures
  ``D(w_i, w_Re)`` to the benign *mean* rather than to the global model, and stops at
  ``λ ≤ 10⁻⁵`` (here: ``λ < 10⁻⁵``).
* FLPoison's partial-knowledge variant starts ``λ`` at 1 and simulates Krum on the attackers' own
  models; here the caller passes ``lambda_init`` for that (the bound needs ``n_b > c + 1``).
* The paper solves for ``λ`` with all crafted models equal to ``w'_1`` and only then spreads the
  ``c − 1`` supporters in a small ball (FLPoison's ``sample_vectors`` uses radius 0.01); here
  ``epsilon`` (default 0: exact copies).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from attacks.poisoning._common import (
    check_benign,
    direction_sign,
    gram,
    krum_scores,
    matvec,
    mean_std,
    rows_of,
    sq_distances,
)

__all__ = [
    "Selector",
    "fang_krum",
    "fang_krum_lambda",
    "fang_krum_lambda_bound",
    "fang_trimmed_mean",
    "fang_trimmed_mean_partial",
    "krum_select",
]

Selector = Callable[[torch.Tensor], int]
"""``select(updates) -> row index`` of the update Krum keeps, for an ``(m, d)`` update matrix whose
first ``c`` rows are the crafted ones."""


def krum_select(updates: torch.Tensor, *, num_malicious: int) -> int:
    """Row index of the update Krum selects (Blanchard et al., NeurIPS 2017): the lowest sum of squared
    distances to its ``m − f − 2`` nearest other rows (at least one), with ``f = num_malicious``.

    A self-contained default for :func:`fang_krum`; score ties go to the lowest row index (the
    project's Krum aggregator breaks them by client id).

    >>> krum_select(torch.tensor([[0.0], [0.1], [0.25], [5.0]]), num_malicious=0)
    1
    """
    return int(torch.argmin(krum_scores(sq_distances(gram(updates)), num_malicious)))


def fang_krum_lambda_bound(benign: torch.Tensor, *, num_malicious: int) -> float:
    """The upper bound on ``λ`` of Fang et al. (2020, Sec. 4) in update space.

    ``1/((m − 2c − 1)√d) · min_i Σ_{l ∈ Γ̃_i} ‖Δ_l − Δ_i‖ + 1/√d · max_i ‖Δ_i‖`` over the ``n_b = m − c``
    benign updates, ``Γ̃_i`` being the ``m − c − 2 = n_b − 2`` benign updates closest to ``Δ_i``.

    Raises
    ------
    ValueError
        If ``m − 2c − 1 = n_b − c − 1 < 1`` (the bound is undefined).
    """
    check_benign(benign, num_malicious=num_malicious)
    n_b, d = benign.shape
    denom = n_b - num_malicious - 1
    if denom < 1:
        raise ValueError(
            f"the bound needs m - 2c - 1 = n_b - c - 1 >= 1, got n_b={n_b}, c={num_malicious}; "
            "pass lambda_init"
        )
    g = gram(benign)
    term1 = 0.0
    k = n_b - 2
    if k >= 1:
        dist = sq_distances(g).sqrt().fill_diagonal_(float("inf"))
        nearest = torch.topk(dist, k, dim=1, largest=False).values.sum(dim=1)
        term1 = float(nearest.min()) / (denom * math.sqrt(d))
    term2 = float(torch.diagonal(g).clamp_min(0.0).sqrt().max()) / math.sqrt(d)
    return term1 + term2


def fang_krum_lambda(
    benign: torch.Tensor,
    *,
    num_malicious: int,
    direction: torch.Tensor | None = None,
    select: Selector | None = None,
    lambda_init: float | None = None,
    threshold: float = 1e-5,
) -> tuple[float, bool]:
    """``λ`` of Fang et al.'s Krum attack: halve from the upper bound until Krum selects a crafted update.

    Parameters
    ----------
    benign : torch.Tensor
        ``(n_b, d)`` benign updates the attackers know (full knowledge), or their own before-attack
        updates (partial knowledge; pass ``lambda_init`` then, as the bound needs ``n_b > c + 1``).
    num_malicious : int
        ``c``, the number of crafted updates (all equal to ``−λ·s`` during the search).
    direction : torch.Tensor | None
        ``(d,)`` tensor whose sign is ``s``; default ``sign(mean(benign))``.
    select : Selector | None
        ``select(updates) -> index`` of Krum's choice among ``[c crafted rows; benign rows]``; pass the
        server's real Krum. ``None`` uses :func:`krum_select` with ``f = c``, evaluated from a Gram
        matrix computed once (no ``(m, d)`` matrix per trial).
    lambda_init : float | None
        Starting ``λ``; default :func:`fang_krum_lambda_bound`.
    threshold : float
        Stop once ``λ < threshold`` (the paper: 10⁻⁵).

    Returns
    -------
    tuple[float, bool]
        The first ``λ`` of ``λ_0, λ_0/2, …`` for which Krum selects a crafted update, and ``True``; or,
        if none ``≥ threshold`` does, the first ``λ < threshold`` and ``False`` (the paper does not
        say what to send then; :func:`fang_krum` sends ``−λ·s`` with this tiny ``λ``).
    """
    check_benign(benign, num_malicious=num_malicious)
    c = num_malicious
    if c == 0:
        return 0.0, False
    s = direction_sign(benign, direction)
    lam = fang_krum_lambda_bound(benign, num_malicious=c) if lambda_init is None else float(lambda_init)

    if select is None:
        g = gram(benign)
        n_b = benign.shape[0]
        sq_norms = torch.diagonal(g)
        s_dot = matvec(benign, s)
        s_sq = float(s.square().sum())
        dist = torch.zeros(c + n_b, c + n_b, dtype=torch.float64, device=benign.device)
        dist[c:, c:] = sq_distances(g)

        def chosen(lam_: float) -> int:
            cross = (lam_ * lam_ * s_sq + 2.0 * lam_ * s_dot + sq_norms).clamp_min(0.0)
            dist[:c, c:] = cross
            dist[c:, :c] = cross[:, None]
            return int(torch.argmin(krum_scores(dist, c)))
    else:

        def chosen(lam_: float) -> int:
            crafted = rows_of(-lam_ * s, c, benign)
            return int(select(torch.cat([crafted, benign], dim=0)))

    while lam >= threshold:
        if chosen(lam) < c:
            return lam, True
        lam /= 2.0
    return lam, False


def fang_krum(
    benign: torch.Tensor,
    *,
    num_malicious: int,
    direction: torch.Tensor | None = None,
    select: Selector | None = None,
    lambda_init: float | None = None,
    threshold: float = 1e-5,
    epsilon: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fang et al.'s attack on Krum (full knowledge; partial with ``lambda_init``), in update space.

    Row 0 is ``−λ·s`` with ``λ`` from :func:`fang_krum_lambda`; rows ``1 … c − 1`` are copies of it
    (``epsilon = 0``) or drawn uniformly from the Euclidean ball of radius ``epsilon`` around it.
    Parameters as in :func:`fang_krum_lambda`; ``generator`` seeds the ball samples.

    Returns
    -------
    torch.Tensor
        ``(num_malicious, d)`` malicious updates.
    """
    check_benign(benign, num_malicious=num_malicious)
    if epsilon < 0:
        raise ValueError("epsilon must be >= 0")
    c, d = num_malicious, benign.shape[1]
    lam, _ = fang_krum_lambda(
        benign,
        num_malicious=c,
        direction=direction,
        select=select,
        lambda_init=lambda_init,
        threshold=threshold,
    )
    w1 = -lam * direction_sign(benign, direction)
    out = rows_of(w1, c, benign)
    if epsilon > 0 and c > 1:
        dev = generator.device if generator is not None else torch.device("cpu")
        dirs = torch.randn(c - 1, d, generator=generator, dtype=torch.float64, device=dev)
        dirs /= torch.linalg.vector_norm(dirs, dim=1, keepdim=True).clamp_min(1e-300)
        radii = epsilon * torch.rand(c - 1, generator=generator, dtype=torch.float64, device=dev) ** (1.0 / d)
        noise = (dirs * radii[:, None]).to(w1.device)
        out[1:] = (w1[None, :] + noise).to(benign.dtype)
    return out


def _uniform(
    lo: torch.Tensor, hi: torch.Tensor, count: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``count`` rows of independent ``U[lo_j, hi_j]`` values (float64, ``lo``'s device)."""
    dev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(count, lo.shape[0], generator=generator, dtype=torch.float64, device=dev).to(lo.device)
    return lo[None, :] + u * (hi - lo)[None, :]


def fang_trimmed_mean(
    benign: torch.Tensor,
    *,
    num_malicious: int,
    b: float = 2.0,
    direction: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fang et al.'s full-knowledge attack on trimmed mean and median (Sec. 4).

    Parameters
    ----------
    benign : torch.Tensor
        ``(n_b, d)`` benign updates of the round.
    num_malicious : int
        ``c``, number of malicious updates to return.
    b : float
        Range factor ``b > 1`` (the paper: 2).
    direction : torch.Tensor | None
        ``(d,)`` tensor whose sign is ``s``; default ``sign(mean(benign))``.
    reference : torch.Tensor | None
        The global model ``w_Re`` (``(d,)``). If given, the rule is applied to the models
        ``w_Re + Δ`` (the paper's form) and the result returned as updates again; if ``None`` it is
        applied to the updates directly (as public re-implementations do).
    generator : torch.Generator | None
        Source of the uniform samples.

    Returns
    -------
    torch.Tensor
        ``(c, d)`` malicious updates; every value lies beyond the benign maximum (``s_j = −1``) or
        minimum (``s_j ≥ 0``) of its coordinate, within a factor ``b``.
    """
    check_benign(benign, num_malicious=num_malicious)
    if b <= 1:
        raise ValueError(f"b must be > 1, got {b}")
    s = direction_sign(benign, direction)
    w_max = benign.amax(dim=0).to(torch.float64)
    w_min = benign.amin(dim=0).to(torch.float64)
    ref = None
    if reference is not None:
        if reference.shape != benign.shape[1:]:
            raise ValueError(f"reference must have shape {tuple(benign.shape[1:])}")
        ref = reference.to(device=benign.device, dtype=torch.float64)
        w_max, w_min = w_max + ref, w_min + ref
    up = s < 0  # the parameter would decrease: push it above the benign maximum
    lo = torch.where(up, w_max, torch.where(w_min > 0, w_min / b, b * w_min))
    hi = torch.where(up, torch.where(w_max > 0, b * w_max, w_max / b), w_min)
    vals = _uniform(lo, hi, num_malicious, generator)
    if ref is not None:
        vals = vals - ref[None, :]
    return vals.to(benign.dtype)


def fang_trimmed_mean_partial(
    benign: torch.Tensor,
    *,
    num_malicious: int,
    direction: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fang et al.'s partial-knowledge attack on trimmed mean and median (Sec. 4).

    ``μ_j``, ``σ_j`` (sample standard deviation) from ``benign`` (the attackers' own before-attack
    updates, at least two); each attacker samples uniformly in ``[μ_j + 3σ_j, μ_j + 4σ_j]`` if
    ``s_j = −1`` and in ``[μ_j − 4σ_j, μ_j − 3σ_j]`` otherwise. Being shift-invariant, the rule is
    the same on models and on updates.

    Returns
    -------
    torch.Tensor
        ``(num_malicious, d)`` malicious updates.
    """
    check_benign(benign, num_malicious=num_malicious, min_rows=2)
    s = direction_sign(benign, direction)
    mu, sd = mean_std(benign)
    up = s < 0
    lo = torch.where(up, mu + 3.0 * sd, mu - 4.0 * sd)
    hi = torch.where(up, mu + 4.0 * sd, mu - 3.0 * sd)
    return _uniform(lo, hi, num_malicious, generator).to(benign.dtype)
