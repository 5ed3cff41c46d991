"""Plain FedAvg: the example-weighted mean of the updates (McMahan et al., AISTATS 2017)."""

from __future__ import annotations

import torch

from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext


def weighted_mean(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_i w_i u_i / Σ_i w_i, computed in float64 for order-independent rounding."""
    w = weights.to(torch.float64)
    return (w @ updates.to(torch.float64) / w.sum()).to(updates.dtype)


@AGGREGATORS.register("fedavg")
class FedAvg(Aggregator):
    """Example-weighted mean of all updates (McMahan et al., 2017); no defense."""

    needs_individual_updates = False  # a function of the weighted sum: runs behind secure aggregation
    selects_clients = False  # every client enters the mean: no detection rates

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        return AggregationResult(
            weighted_mean(updates, weights), tuple(ctx.client_ids), {cid: 0.0 for cid in ctx.client_ids}
        )
