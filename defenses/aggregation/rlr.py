"""Robust learning rate, RLR (Ozdayi, Kantarcioglu, Gel, AAAI 2021, "Defending against Backdoors in
Federated Learning with Robust Learning Rate")."""

from __future__ import annotations

import torch

from defenses.aggregation._linalg import DEFAULT_CHUNK_ELEMENTS, column_chunks, weighted_mean
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext

__all__ = ["RLR", "rlr_sign"]


def rlr_sign(
    updates: torch.Tensor, *, threshold: float, max_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate learning-rate sign of RLR (Ozdayi et al., 2021, Eq. 4).

    With sign agreement ``A_k = |Σ_i sgn(Δ_{i,k})|`` the server learning rate of coordinate ``k`` is
    ``+η`` when ``A_k ≥ θ`` and ``−η`` otherwise; this returns that sign (±1, in the updates'
    dtype). Also returns, per client, the fraction of coordinates where its sign differs from the
    majority sign ``sgn(Σ_i sgn(Δ_{i,k}))`` (float64).

    >>> u = torch.tensor([[1.0, 1.0, -1.0], [2.0, -1.0, -3.0], [0.5, 1.0, 2.0]])
    >>> s, dis = rlr_sign(u, threshold=3)
    >>> s.tolist(), [round(x, 3) for x in dis.tolist()]
    ([1.0, -1.0, -1.0], [0.0, 0.333, 0.333])
    """
    n, d = updates.shape
    out = torch.empty(d, dtype=updates.dtype, device=updates.device)
    disagree = torch.zeros(n, dtype=torch.float64, device=updates.device)
    for sl in column_chunks(d, n, max_elements=max_elements):
        signs = torch.sign(updates[:, sl])
        total = signs.sum(dim=0)
        out[sl] = torch.where(total.abs() >= threshold, 1.0, -1.0).to(updates.dtype)
        disagree += (signs != torch.sign(total)).sum(dim=1).to(torch.float64)
    return out, disagree / max(d, 1)


@AGGREGATORS.register("rlr")
class RLR(Aggregator):
    """Robust learning rate (Ozdayi et al., AAAI 2021): the example-weighted mean update, with each
    coordinate's sign flipped where fewer than θ clients agree on its sign.

    The server learning rate η itself is applied later (``federation.server_lr``), so this returns
    ``sgn-lr ⊙ mean(Δ)``. Every client is ``accepted``; score = the fraction of coordinates where
    the client's sign disagrees with the majority sign (higher = more suspicious).

    Parameters
    ----------
    threshold : float
        θ, the minimum sign agreement ``|Σ sgn Δ_i|`` (the authors use 4 with 10 agents per round and
        8 with 40; BackFed uses 8). A value above the round's client count flips every coordinate.
    """

    selects_clients = False  # flips coordinates' learning rate, rejects no client: no detection rates

    def __init__(self, threshold: float = 4.0) -> None:
        if threshold < 0:
            raise ValueError("threshold must be >= 0")
        self.threshold = threshold

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        sign, disagree = rlr_sign(updates, threshold=self.threshold)
        update = sign * weighted_mean(updates, weights)
        return AggregationResult(
            update,
            tuple(ctx.client_ids),
            {cid: float(s) for cid, s in zip(ctx.client_ids, disagree.tolist())},
        )
