"""Coordinate-wise trimmed mean (Yin, Chen, Ramchandran, Bartlett, ICML 2018)."""

from __future__ import annotations

import torch

from defenses.aggregation._linalg import DEFAULT_CHUNK_ELEMENTS, column_chunks
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext

__all__ = ["TrimmedMean", "trim_count", "trimmed_mean"]


def trim_count(n: int, beta: float) -> int:
    """Values removed from *each* end of a coordinate: ``⌊β·n⌋`` (as Flower's ``trim_mean`` and
    ``scipy.stats.trim_mean``).

    >>> trim_count(10, 0.2), trim_count(9, 0.2), trim_count(4, 0.1)
    (2, 1, 0)
    """
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {beta}")
    return int(beta * n)


def trimmed_mean(
    updates: torch.Tensor, *, beta: float, max_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate-wise β-trimmed mean (Yin et al., 2018, Definition 2).

    Per coordinate the ``k = ⌊β·n⌋`` largest and ``k`` smallest values are dropped and the rest
    averaged (unweighted).

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        The ``(d,)`` trimmed mean, and for each client the fraction of coordinates at which its value
        was trimmed (float64, ``(n,)``).

    >>> m, frac = trimmed_mean(torch.tensor([[0.0], [1.0], [2.0], [100.0]]), beta=0.25)
    >>> m.tolist(), frac.tolist()
    ([1.5], [1.0, 0.0, 0.0, 1.0])
    """
    n, d = updates.shape
    k = trim_count(n, beta)
    out = torch.empty(d, dtype=updates.dtype, device=updates.device)
    trimmed = torch.zeros(n, dtype=torch.float64, device=updates.device)
    for sl in column_chunks(d, n, max_elements=max_elements):
        s, idx = torch.sort(updates[:, sl], dim=0)
        out[sl] = s[k : n - k].to(torch.float64).mean(dim=0).to(updates.dtype)
        if k:
            cut = torch.cat([idx[:k], idx[n - k :]]).flatten()
            trimmed += torch.bincount(cut, minlength=n).to(torch.float64)
    return out, trimmed / max(d, 1)


@AGGREGATORS.register("trimmed_mean")
class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018), unweighted.

    Every client is ``accepted``. Score = the fraction of coordinates at which the client's value
    was among the trimmed ones (higher = more suspicious).

    Parameters
    ----------
    beta : float
        Fraction trimmed from each end per coordinate, in ``[0, 0.5)``; ``⌊β·n⌋`` values per side.
    """

    selects_clients = False  # trims values per coordinate, never a client: no detection rates

    def __init__(self, beta: float = 0.2) -> None:
        trim_count(1, beta)  # validates the range
        self.beta = beta

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        agg, frac = trimmed_mean(updates, beta=self.beta)
        return AggregationResult(
            agg, tuple(ctx.client_ids), {cid: float(s) for cid, s in zip(ctx.client_ids, frac.tolist())}
        )
