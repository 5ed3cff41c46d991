"""DnC, Divide-and-Conquer (Shejwalkar, Houmansadr, NDSS 2021, "Manipulating the Byzantine: Optimizing
Model Poisoning Attacks and Defenses for Federated Learning", Algorithm 2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from pydantic import Field

from defenses.aggregation._linalg import lowest, weighted_sum
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext

__all__ = ["DnC", "dnc_filter", "dnc_outlier_scores"]


def dnc_outlier_scores(sub: torch.Tensor) -> torch.Tensor:
    """DnC outlier scores ``s_i = ((x_i − μ)·v)²`` of the rows of ``sub`` (Shejwalkar & Houmansadr, 2021,
    Algorithm 2), with ``μ`` the row mean and ``v`` the top right singular vector of the centred
    matrix ``C = sub − μ``.

    Computed from the ``n × n`` matrix ``CCᵀ = U Σ² Uᵀ`` instead of an SVD of ``C``: ``C v₁ = σ₁ u₁``,
    so ``s = σ₁² u₁²`` (float64). The sign ambiguity of ``v`` does not matter (the score is a square).

    >>> [round(s, 9) for s in dnc_outlier_scores(torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0]])).tolist()]
    [1.0, 1.0, 4.0]
    """
    c = sub.to(torch.float64)
    c = c - c.mean(dim=0, keepdim=True)
    evals, evecs = torch.linalg.eigh(c @ c.T)
    return evals[-1].clamp_min(0.0) * evecs[:, -1].square()


def dnc_filter(
    updates: torch.Tensor,
    *,
    ids: Sequence[int],
    num_remove: int,
    niters: int,
    subsample_dim: int,
    generator: torch.Generator,
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The good set of DnC (Shejwalkar & Houmansadr, 2021, Algorithm 2).

    ``niters`` times: draw ``b = min(subsample_dim, d)`` distinct coordinates (sorted) from
    ``generator``, score the rows on them (:func:`dnc_outlier_scores`) and keep all but the
    ``num_remove`` highest scores (ties broken by client id); the good set is the intersection of the
    kept sets. Rows are put in client-id order before scoring, so the result does not depend on the
    row order of ``updates``.

    Returns
    -------
    tuple[list[int], torch.Tensor, torch.Tensor]
        The good row indices (ascending; empty if no row was kept in every iteration), and per row the
        number of iterations in which it was removed and its largest outlier score (float64, ``(n,)``).
    """
    n, d = updates.shape
    order = sorted(range(n), key=lambda i: ids[i])
    sorted_ids = [ids[i] for i in order]
    b = min(subsample_dim, d)
    k = min(max(num_remove, 0), n - 1)
    flagged = torch.zeros(n, dtype=torch.float64)
    max_score = torch.zeros(n, dtype=torch.float64)
    for _ in range(niters):
        if b < d:
            cols = torch.randperm(d, generator=generator)[:b].sort().values.to(updates.device)
            sub = updates[:, cols]
        else:
            sub = updates
        scores = dnc_outlier_scores(sub[order]).cpu()
        kept = set(lowest(scores, n - k, sorted_ids))
        for pos, row in enumerate(order):
            max_score[row] = max(float(max_score[row]), float(scores[pos]))
            if pos not in kept:
                flagged[row] += 1
    good = [i for i in range(n) if flagged[i] == 0]
    return good, flagged, max_score


@AGGREGATORS.register("dnc")
class DnC(Aggregator):
    """DnC, Divide-and-Conquer (Shejwalkar & Houmansadr, NDSS 2021, Algorithm 2): spectral filtering
    on random coordinate subsets, then the mean of the survivors.

    ``niters`` times, on ``b`` random coordinates: centre the sub-vectors by their mean, project
    them on the top right singular vector and drop the ``⌊c·f⌋`` clients with the largest squared
    projections; the good set (``accepted``) is the intersection over the iterations, and the
    aggregate is its uniform mean (the paper's; the example counts are not used). Coordinates come
    from ``ctx.generator("dnc")``: reproducible for a (seed, round), independent of the row order.
    Score = the client's largest outlier score over the iterations (higher = more suspicious).

    Deviations (the paper leaves these cases open): at most ``n − 1`` clients are dropped per
    iteration; if no client survives every iteration, the good set falls back to the clients
    dropped in the fewest iterations (the intersection is the clients dropped in none). The
    re-implementations in the SignGuard authors' repository and in Blades also intersect (and
    average an empty set to NaN in that case).

    Parameters
    ----------
    num_malicious : int
        ``f``, the assumed number of malicious clients per round.
    filtering_fraction : float
        ``c``, the filtering fraction: ``⌊c·f⌋`` clients are dropped per iteration (paper: 1).
    niters : int
        Number of iterations (paper: 5).
    subsample_dim : int
        ``b``, coordinates sampled per iteration (paper: 10 000), capped at the model dimension.
    """

    def __init__(
        self,
        *,
        num_malicious: Annotated[int, Field(ge=0)] = 1,
        filtering_fraction: Annotated[float, Field(ge=0)] = 1.0,
        niters: Annotated[int, Field(ge=1)] = 5,
        subsample_dim: Annotated[int, Field(ge=1)] = 10_000,
    ) -> None:
        if num_malicious < 0 or not filtering_fraction >= 0 or niters < 1 or subsample_dim < 1:
            raise ValueError(
                "need num_malicious >= 0, filtering_fraction >= 0, niters >= 1, subsample_dim >= 1"
            )
        self.num_malicious, self.filtering_fraction = num_malicious, float(filtering_fraction)
        self.niters, self.subsample_dim = niters, subsample_dim

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        ids = list(ctx.client_ids)
        n = len(ids)
        good, flagged, max_score = dnc_filter(
            updates,
            ids=ids,
            num_remove=int(self.filtering_fraction * self.num_malicious),
            niters=self.niters,
            subsample_dim=self.subsample_dim,
            generator=ctx.generator("dnc"),
        )
        if not good:
            fewest = float(flagged.min())
            good = [i for i in range(n) if flagged[i] == fewest]
        coeffs = torch.zeros(n, dtype=torch.float64)
        coeffs[good] = 1.0 / len(good)
        update = weighted_sum(updates, coeffs)
        return AggregationResult(
            update, tuple(ids[i] for i in good), {cid: float(s) for cid, s in zip(ids, max_score.tolist())}
        )
