"""Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018, "The hidden vulnerability of distributed
learning in Byzantium")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from defenses.aggregation._linalg import (
    DEFAULT_CHUNK_ELEMENTS,
    column_chunks,
    coordinate_median,
    gram,
    lowest,
    sq_distances,
)
from defenses.aggregation.krum import krum_scores
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext

__all__ = ["Bulyan", "bulyan_select", "closest_to_median_mean"]


def bulyan_select(
    sq_dists: torch.Tensor,
    *,
    f: int,
    theta: int,
    ids: Sequence[int],
    selection: Literal["iterative_krum", "multi_krum"] = "iterative_krum",
) -> list[int]:
    """Step 1 of Bulyan: choose ``θ`` rows with a Krum-based rule.

    ``"iterative_krum"`` is the paper's rule (El Mhamdi et al., 2018, Algorithm 1): run Krum on the
    remaining set, move its choice to the selection, repeat ``θ`` times. ``"multi_krum"`` takes the
    ``θ`` lowest Krum scores of one pass over all rows (Flower's default ``selection_rule``).
    """
    n = sq_dists.shape[0]
    if selection == "multi_krum":
        return lowest(krum_scores(sq_dists, f), theta, ids)
    remaining = list(range(n))
    chosen: list[int] = []
    for _ in range(theta):  # one Krum per selected client: unavoidable loop over clients
        sub = sq_dists[remaining][:, remaining]
        pick = remaining[lowest(krum_scores(sub, f), 1, [ids[r] for r in remaining])[0]]
        chosen.append(pick)
        remaining.remove(pick)
    return chosen


def closest_to_median_mean(
    selected: torch.Tensor, *, beta: int, max_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> torch.Tensor:
    """Step 2 of Bulyan: per coordinate, the mean of the ``β`` values closest to the coordinate's
    median over the ``θ`` selected updates.

    >>> closest_to_median_mean(torch.tensor([[0.0], [1.0], [1.5], [10.0], [-7.0]]), beta=3).tolist()
    [0.8333333134651184]
    """
    n, d = selected.shape
    out = torch.empty(d, dtype=selected.dtype, device=selected.device)
    for sl in column_chunks(d, n, max_elements=max_elements // 2):
        block = selected[:, sl]
        med = coordinate_median(block)
        idx = torch.topk((block - med).abs(), beta, dim=0, largest=False).indices
        out[sl] = torch.gather(block, 0, idx).to(torch.float64).mean(dim=0).to(selected.dtype)
    return out


@AGGREGATORS.register("bulyan")
class Bulyan(Aggregator):
    """Bulyan (El Mhamdi et al., ICML 2018): Krum-based selection of ``θ = n − 2f`` updates, then a
    coordinate-wise mean of the ``β = θ − 2f`` values closest to the median.

    Unweighted (as the paper and Flower). ``accepted`` = the ``θ`` selected clients; score = Krum
    score over all ``n`` updates (higher = more suspicious).

    Deviation: the paper requires ``n ≥ 4f + 3``. When a round has fewer clients, ``f`` is lowered
    to ``⌊(n − 3)/4⌋`` (at least 0) for that round instead of failing the run; with ``f = 0`` Bulyan
    is the plain mean.

    Parameters
    ----------
    num_malicious : int
        ``f``, the assumed number of Byzantine clients per round.
    selection : str
        ``"iterative_krum"`` (paper) or ``"multi_krum"`` (one Krum pass, Flower's default).
    """

    def __init__(
        self, num_malicious: int = 1, selection: Literal["iterative_krum", "multi_krum"] = "iterative_krum"
    ) -> None:
        if num_malicious < 0:
            raise ValueError("num_malicious must be >= 0")
        self.num_malicious = num_malicious
        self.selection: Literal["iterative_krum", "multi_krum"] = selection

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        ids = list(ctx.client_ids)
        n = len(ids)
        f = min(self.num_malicious, max(0, (n - 3) // 4))
        theta, beta = n - 2 * f, n - 4 * f
        d2 = sq_distances(gram(updates))
        rows = bulyan_select(d2, f=f, theta=theta, ids=ids, selection=self.selection)
        update = closest_to_median_mean(updates[rows], beta=beta)
        scores = krum_scores(d2, f)
        return AggregationResult(
            update, tuple(ids[r] for r in rows), {cid: float(s) for cid, s in zip(ids, scores.tolist())}
        )
