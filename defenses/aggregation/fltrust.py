"""FLTrust (Cao, Fang, Liu, Gong; NDSS 2021, "FLTrust: Byzantine-robust Federated Learning via Trust
Bootstrapping")."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from defenses.aggregation._linalg import column_chunks, row_norms, weighted_sum
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext

__all__ = ["FLTrust", "fltrust_trust_scores"]


def fltrust_trust_scores(updates: torch.Tensor, root: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trust scores ``TS_i = ReLU(cos(g_i, g₀))`` and the rescaling factors ``‖g₀‖ / ‖g_i‖`` (float64).

    A zero update, or a zero root update, has cosine 0 (trust 0); its factor is 0.

    >>> u = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
    >>> ts, f = fltrust_trust_scores(u, torch.tensor([1.0, 0.0]))
    >>> [round(v, 4) for v in ts.tolist()], [round(v, 4) for v in f.tolist()]
    ([1.0, 0.0, 0.7071], [0.5, 1.0, 0.7071])
    """
    n, d = updates.shape
    g0 = root.to(device=updates.device, dtype=torch.float64).reshape(-1)
    if g0.numel() != d:
        raise ValueError(f"the root update has {g0.numel()} entries, the updates {d}")
    dots = torch.zeros(n, dtype=torch.float64, device=updates.device)
    for sl in column_chunks(d, n):
        dots += updates[:, sl].to(torch.float64) @ g0[sl]
    norms = row_norms(updates)
    n0 = float(torch.linalg.vector_norm(g0))
    live = (norms > 0) & (n0 > 0)
    safe = torch.where(live, norms, torch.ones_like(norms))
    cos = torch.where(live, dots / (safe * max(n0, 1e-300)), torch.zeros_like(dots)).clamp(-1.0, 1.0)
    factors = torch.where(live, n0 / safe, torch.zeros_like(norms))
    return cos.clamp_min(0.0), factors


@AGGREGATORS.register("fltrust")
class FLTrust(Aggregator):
    """FLTrust (Cao et al., NDSS 2021): trust each update by its cosine to the server's own update g₀ on a
    small clean root set, rescale every update to ‖g₀‖, and average by trust.

    ``TS_i = ReLU(cos(g_i, g₀))``, ``ĝ_i = g_i · ‖g₀‖ / ‖g_i‖``, update ``= Σ TS_i ĝ_i / Σ TS_i`` (the zero
    update when every score is 0). Example counts are ignored, as in the paper. ``accepted`` = clients with
    ``TS_i > 0``; score = ``1 − TS_i`` (higher = more suspicious; 1 = no trust).

    The server's update g₀ comes from the round context (``ctx.root_update``): the engine computes it every
    round by training a copy of the global model on ``root_size`` examples with the clients' local training
    recipe (the paper: 100 examples). Assumption (as the paper): the server holds clean data from the
    clients' distribution; here the engine draws the root set, seeded, from the global test split and removes
    it from the evaluator's test set (see :mod:`simulator.flower.server_app`).

    Parameters
    ----------
    root_size : int
        Examples in the server's root set (paper: 100).
    """

    needs_root_update = True

    def __init__(self, root_size: Annotated[int, Field(ge=1)] = 100) -> None:
        if root_size < 1:
            raise ValueError("root_size must be >= 1")
        self.root_size = root_size

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        if ctx.root_update is None:
            raise ValueError(
                "fltrust needs the server's root update (ctx.root_update), which the engine computes on the "
                "server's root set when the aggregator declares needs_root_update; none was given"
            )
        ids = list(ctx.client_ids)
        ts, factors = fltrust_trust_scores(updates, ctx.root_update)
        total = float(ts.sum())
        if total > 0:
            update = weighted_sum(updates, ts * factors / total)
        else:
            update = torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device)
        accepted = tuple(cid for cid, t in zip(ids, ts.tolist()) if t > 0)
        return AggregationResult(update, accepted, {cid: 1.0 - float(t) for cid, t in zip(ids, ts.tolist())})
