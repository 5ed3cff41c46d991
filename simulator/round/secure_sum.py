"""Secure aggregation inside the server step: the aggregator, the observer and the defenses see the sum alone.

``mode = "simulated"``: the round's per-client updates (which exist only because the clients run in this
process) are encoded exactly as Flower's SecAgg+ encodes them (:func:`simulator.secagg.encoding.secure_mean`:
weighting by ``num_examples / max_weight``, clipping, stochastic quantisation, the modular sum) and replaced
by the decoded weighted mean before any server plug-in runs. What leaves this stage is what the real protocol
reveals: the aggregate, the number of clients in it and their total weight (Bell et al., CCS 2020, SecAgg+;
Flower's ``SecAggPlusWorkflow`` for the encoding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from simulator.context import RoundContext, private_generator
from simulator.scenario.secure_aggregation import SecureAggregationConfig
from simulator.secagg.encoding import SecAggParams, precision_problems, secure_mean

__all__ = ["SecureSum", "SecureSumAborted", "SimulatedSecureAggregation", "secagg_params"]


class SecureSumAborted(RuntimeError):
    """The protocol halted without a sum (too few surviving clients or shares); the round leaves the model as
    it was, which is what a real deployment does."""


class SecureSum(Protocol):
    """The secure-aggregation stage of the server step: ``(updates (n, d), weights (n,), ctx)`` → the weighted
    mean the protocol delivers and the client ids whose updates are in it (all of them, or the survivors of a
    protocol run with dropouts)."""

    def check(self, counts: Sequence[int]) -> list[str]: ...

    def __call__(
        self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext
    ) -> tuple[torch.Tensor, tuple[int, ...]]: ...


def secagg_params(cfg: SecureAggregationConfig, counts: Sequence[int]) -> SecAggParams:
    """The encoding's parameters; ``max_weight`` defaults to the largest of ``counts`` (no precision lost)."""
    mw = cfg.max_weight if cfg.max_weight is not None else float(max(max(counts, default=1), 1))
    return SecAggParams(
        clipping_range=cfg.clipping_range,
        quantization_range=cfg.quantization_range,
        modulus=cfg.modulus,
        max_weight=mw,
    )


@dataclass
class SimulatedSecureAggregation:
    """The server step's secure sum (``mode = "simulated"``); ``key`` seeds the clients' stochastic rounding
    (the run's privacy secret, or ``secure_aggregation.seed``)."""

    cfg: SecureAggregationConfig
    key: int | None

    def check(self, counts: Sequence[int]) -> list[str]:
        """Precision problems of this encoding for the federation's example counts (empty: fine)."""
        if self.cfg.max_weight is None:
            return []
        return precision_problems(list(counts), secagg_params(self.cfg, counts))

    def __call__(
        self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The weighted mean of the rows of ``updates`` as the protocol delivers it. ``weights`` are example
        counts (or ones when the privacy mechanism needs equal weights), which the clients send as
        ``num_examples``."""
        counts = [max(1, round(float(w))) for w in weights]
        params = secagg_params(self.cfg, counts)
        g = private_generator(self.key, ctx.server_round, "secure-aggregation")
        agg = secure_mean(updates.detach().cpu(), counts, params, generator=g)
        return agg.to(device=updates.device, dtype=updates.dtype), tuple(ctx.client_ids)
