"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017).

Krum scores every update by the sum of its squared Euclidean distances to its ``n − f − 2`` nearest
neighbours and keeps the lowest-scoring one; Multi-Krum keeps the ``m`` lowest and averages them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from defenses.aggregation._linalg import gram, lowest, sq_distances, weighted_mean
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext

__all__ = ["Krum", "MultiKrum", "krum_scores", "select_multikrum"]


def krum_scores(sq_dists: torch.Tensor, f: int) -> torch.Tensor:
    """Krum score of each row: the sum of the ``max(1, n − f − 2)`` smallest squared distances to
    the *other* rows (Blanchard et al., 2017, Sec. 4; the ``max(1, ·)`` floor is Flower's, so that
    small rounds still get a score).

    Parameters
    ----------
    sq_dists : torch.Tensor
        ``(n, n)`` squared pairwise distances with a zero diagonal.
    f : int
        Assumed number of Byzantine clients.

    Returns
    -------
    torch.Tensor
        ``(n,)`` scores (float64), lower = more central.
    """
    n = sq_dists.shape[0]
    if n == 1:
        return torch.zeros(1, dtype=torch.float64, device=sq_dists.device)
    k = min(max(1, n - f - 2), n - 1)
    off = sq_dists.to(torch.float64).clone().fill_diagonal_(float("inf"))
    return torch.topk(off, k, dim=1, largest=False).values.sum(dim=1)


def select_multikrum(
    updates: torch.Tensor, *, f: int, m: int, ids: Sequence[int] | None = None
) -> tuple[list[int], torch.Tensor]:
    """Row indices of the ``m`` updates with the lowest Krum scores (Blanchard et al., 2017).

    Parameters
    ----------
    updates : torch.Tensor
        ``(n, d)`` update matrix.
    f : int
        Assumed number of Byzantine clients.
    m : int
        Number of updates to keep (``m = 1`` is Krum).
    ids : Sequence[int] | None
        Client ids used to break score ties independently of row order (default: row indices).

    Returns
    -------
    tuple[list[int], torch.Tensor]
        The selected row indices (lowest score first) and all ``n`` scores.
    """
    n = updates.shape[0]
    scores = krum_scores(sq_distances(gram(updates)), f)
    return lowest(scores, min(max(1, m), n), list(ids) if ids is not None else list(range(n))), scores


class _KrumBase(Aggregator):
    def __init__(self, *, num_malicious: int, num_selected: int | None) -> None:
        if num_malicious < 0:
            raise ValueError("num_malicious must be >= 0")
        if num_selected is not None and num_selected < 1:
            raise ValueError("num_selected must be >= 1")
        self.num_malicious = num_malicious
        self.num_selected = num_selected

    def _m(self, n: int) -> int:
        return max(1, n - self.num_malicious) if self.num_selected is None else self.num_selected

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        ids = list(ctx.client_ids)
        rows, scores = select_multikrum(updates, f=self.num_malicious, m=self._m(len(ids)), ids=ids)
        update = weighted_mean(updates[rows], weights[rows])
        return AggregationResult(
            update, tuple(ids[r] for r in rows), {cid: float(s) for cid, s in zip(ids, scores.tolist())}
        )


@AGGREGATORS.register("krum")
class Krum(_KrumBase):
    """Krum (Blanchard et al., NeurIPS 2017): the single update with the lowest Krum score.

    Score = sum of squared distances to the ``n − f − 2`` nearest other updates (higher = more
    suspicious); ``accepted`` is the selected client. The guarantee needs ``n > 2f + 2``; smaller
    rounds still run with at least one neighbour per score, as in Flower.

    Parameters
    ----------
    num_malicious : int
        ``f``, the assumed number of Byzantine clients per round.
    """

    def __init__(self, num_malicious: int = 1) -> None:
        super().__init__(num_malicious=num_malicious, num_selected=1)


@AGGREGATORS.register("multi_krum")
class MultiKrum(_KrumBase):
    """Multi-Krum (Blanchard et al., NeurIPS 2017): average of the ``m`` lowest-scoring updates.

    The average is weighted by example counts (as Flower's MultiKrum; the paper averages
    uniformly). Scores as in Krum (higher = more suspicious).

    Parameters
    ----------
    num_malicious : int
        ``f``, the assumed number of Byzantine clients per round.
    num_selected : int | None
        ``m``, updates to average; ``None`` means ``n − f`` (the paper's choice).
    """

    def __init__(self, num_malicious: int = 1, num_selected: int | None = None) -> None:
        super().__init__(num_malicious=num_malicious, num_selected=num_selected)
