"""Coordinate-wise median (Yin, Chen, Ramchandran, Bartlett, ICML 2018)."""

from __future__ import annotations

import torch

from defenses.aggregation._linalg import DEFAULT_CHUNK_ELEMENTS, column_chunks, coordinate_median
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext

__all__ = ["Median", "coordinatewise_median", "distance_scores"]


def coordinatewise_median(
    updates: torch.Tensor, *, max_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> torch.Tensor:
    """Median of each coordinate over the ``n`` updates (Yin et al., 2018, "coordinate-wise median").

    For an even ``n`` the two middle values are averaged, as ``numpy.median`` (and so Flower's
    FedMedian) does.

    >>> coordinatewise_median(torch.tensor([[1.0, 5.0], [2.0, -1.0], [9.0, 0.0], [3.0, 0.5]])).tolist()
    [2.5, 0.25]
    """
    n, d = updates.shape
    out = torch.empty(d, dtype=updates.dtype, device=updates.device)
    for sl in column_chunks(d, n, max_elements=max_elements):
        out[sl] = coordinate_median(updates[:, sl])
    return out


def distance_scores(updates: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """``‖u_i − c‖₂`` for every row (float64), over column chunks; used as a suspicion score."""
    n, d = updates.shape
    acc = torch.zeros(n, dtype=torch.float64, device=updates.device)
    for sl in column_chunks(d, n):
        acc += (updates[:, sl].to(torch.float64) - center[sl].to(torch.float64)).square().sum(dim=1)
    return acc.sqrt()


@AGGREGATORS.register("median")
class Median(Aggregator):
    """Coordinate-wise median of the updates (Yin et al., ICML 2018), unweighted.

    Every client is ``accepted`` (each coordinate may come from a different client). Score = the
    Euclidean distance of the client's update to the median (higher = more suspicious).
    """

    selects_clients = False  # every client is accepted (no rejection): no detection rates

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        med = coordinatewise_median(updates)
        scores = distance_scores(updates, med)
        return AggregationResult(
            med, tuple(ctx.client_ids), {cid: float(s) for cid, s in zip(ctx.client_ids, scores.tolist())}
        )
