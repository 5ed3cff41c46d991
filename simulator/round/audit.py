"""The ``[audit] level = "client"`` glue inside a run: canary clients join steps 10-11 of every round.

At step 10 the round's participating inserted canaries (:class:`~simulator.audit.canaries.CanaryClients`) are
appended to the per-client update matrix as extra clients with their own ids (``−1 − j``), so the aggregator
and the DP mechanism treat them exactly like clients (a canary's update has the clip norm, so clipping leaves
it unchanged; canaries do not vote on an adaptive clip norm, so they cannot drag it down). After step 11 the
released aggregate is scored. Canaries are evaluator
state: no plug-in learns which were inserted, and no record lists them among the accepted clients.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from simulator.audit.canaries import CanaryClients
from simulator.audit.record import RecordCanaries
from simulator.audit.report import audit_block
from simulator.context import RoundContext, derive_seed
from simulator.dp.mechanism import ClientLevelDP, PrivacyMechanism
from simulator.scenario.audit import AuditConfig

__all__ = ["CanaryRound", "ClientAudit", "record_audit_block"]


@dataclass
class CanaryRound:
    """What the canaries added to one round."""

    ids: tuple[int, ...] = ()
    metrics: list[dict[str, float]] = field(default_factory=list)


@dataclass
class ClientAudit:
    cfg: AuditConfig
    privacy: PrivacyMechanism
    dim: int
    rate: float
    expected_clients: float
    scenario_seed: int
    canaries: CanaryClients = field(init=False)
    seconds: float = 0.0  # time spent on the canaries (joining, scoring), for the audit's cost

    def __post_init__(self) -> None:
        seed = self.cfg.seed if self.cfg.seed is not None else derive_seed(self.scenario_seed, "audit")
        self.canaries = CanaryClients(num=self.cfg.canaries, dim=self.dim, rate=self.rate, seed=seed)

    def _norm(self, server_round: int, updates: torch.Tensor) -> float:
        if isinstance(self.privacy, ClientLevelDP):
            return float(self.privacy.server_config(server_round)["dp-clip-norm"])
        if self.cfg.canary_norm is not None:
            return self.cfg.canary_norm
        norms = torch.linalg.vector_norm(updates.to(torch.float64), dim=1)
        return float(norms.median()) if len(norms) else 1.0

    def join(
        self, server_round: int, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext
    ) -> tuple[torch.Tensor, torch.Tensor, RoundContext, CanaryRound]:
        """Step 10: append this round's canaries to the update matrix (weight: the mean client weight)."""
        t0 = time.perf_counter()
        try:
            return self._join(server_round, updates, weights, ctx)
        finally:
            self.seconds += time.perf_counter() - t0

    def _join(
        self, server_round: int, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext
    ) -> tuple[torch.Tensor, torch.Tensor, RoundContext, CanaryRound]:
        norm = self._norm(server_round, updates)
        take, ups = self.canaries.round_updates(server_round, norm=norm)
        if not len(take):
            return updates, weights, ctx, CanaryRound()
        ids = tuple(-1 - int(j) for j in take)
        w = float(weights.mean()) if len(weights) else 1.0
        updates = torch.cat([updates, ups.to(updates.dtype).to(updates.device)])
        weights = torch.cat(
            [weights, torch.full((len(take),), w, dtype=weights.dtype, device=weights.device)]
        )
        ctx = dataclasses.replace(
            ctx, client_ids=ctx.client_ids + ids, num_examples=ctx.num_examples + (round(w),) * len(ids)
        )
        return updates, weights, ctx, CanaryRound(ids, [{} for _ in ids])

    def observe(self, released: torch.Tensor, num_in_sum: int) -> None:
        """After step 11: score the canaries against the released aggregate."""
        t0 = time.perf_counter()
        if isinstance(self.privacy, ClientLevelDP):
            std = self.privacy.total_noise_std(num_in_sum)
            norm = self.privacy.clip_history[-1] if self.privacy.clip_history else self.privacy.clip_norm
            self.canaries.observe(
                released, noisy_sum=released * self.expected_clients, noise_std=std, norm=norm
            )
        else:
            self.canaries.observe(released)
        self.seconds += time.perf_counter() - t0

    def scores(self, final_delta: torch.Tensor) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return self.canaries.scores(final_delta)

    def block(
        self, scores: dict[str, tuple[np.ndarray, np.ndarray]], *, delta: float, epsilon_upper: float
    ) -> dict[str, Any]:
        c = self.canaries
        return audit_block(
            scores,
            delta=delta,
            confidence=self.cfg.confidence,
            epsilon_upper=epsilon_upper,
            method="canary clients (Andrew et al., ICLR 2024) with the one-run bound of Steinke, "
            "Nasr, Jagielski (NeurIPS 2023)",
            canaries=c.num,
            extra={
                "level": "client",
                "inserted": int(c.inserted.sum()),
                "seconds_per_round": self.seconds / max(c.rounds, 1),
                "participation_rate": c.rate,
                "mean_participations": float(c.participations[c.inserted].mean())
                if c.inserted.any()
                else 0.0,
            },
        )


def record_audit_block(
    canaries: RecordCanaries, model: nn.Module, cfg: AuditConfig, privacy: PrivacyMechanism, delta: float
) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``[audit] level = "record"``: score the canary examples on the final model;
    the block and the scores."""
    scores = canaries.scores(model)
    block = audit_block(
        scores,
        delta=privacy.delta_of_run(delta),
        confidence=cfg.confidence,
        epsilon_upper=privacy.epsilon_of_view("records"),
        canaries=canaries.num,
        method="canary examples (Steinke, Nasr, Jagielski, NeurIPS 2023), black-box loss on the final model",
        extra={"level": "record", "inserted": int(canaries.inserted.sum())},
    )
    return block, scores
