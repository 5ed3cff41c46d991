"""PrivsimStrategy: Flower's FedAvg with privsim's sampling and aggregation pipeline.

``configure_train`` samples partitions from the seeded sampler (fixed-size or Poisson, attackers
guaranteed when the plan says so, stragglers dropped) instead of FedAvg's ``random.sample``;
``aggregate_train`` runs DESIGN.md steps 7-12 over the round's replies:

7. validate   shapes, dtypes, finite values; bad replies are rejected and recorded
8. desketch   the compressor turns payloads back into per-client updates (or their aggregate)
9. observe    an inversion attack on targeted clients' payloads (server observer), if configured
10. aggregate the Aggregator over the full list → update, accepted ids, per-client scores
11. noise     server-side privacy (central DP) and server defenses
12. apply     w_global += η_server · update (a non-finite aggregate is refused, model unchanged)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from defenses.base import Aggregator, ServerDefense
from simulator.context import RoundContext
from simulator.flat import flatten, load_vector
from simulator.flower.audit import CanaryRound, ClientAudit
from simulator.flower.replies import ValidReply, validate_replies
from simulator.flower.runtime import Runtime
from simulator.results import RoundRecord
from simulator.sampling import Cohort

__all__ = ["PrivsimStrategy", "Observer"]

#: step 9: (round, valid replies, per-client updates or None, round context) -> metrics for the record
Observer = Callable[[int, list[ValidReply], "torch.Tensor | None", RoundContext], dict[str, Any]]


class PrivsimStrategy(FedAvg):
    """FedAvg whose sampling and aggregation are privsim's (see the module docstring)."""

    def __init__(self, *, runtime: Runtime, model: nn.Module, aggregator: Aggregator,
                 server_defenses: list[ServerDefense], observer: Observer | None = None,
                 audit: ClientAudit | None = None) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=0,
                         min_available_nodes=1, weighted_by_key="num-examples")
        self.rt = runtime
        self.model = model  # the server's own copy of the global model
        self.aggregator = aggregator
        self.server_defenses = server_defenses
        self.observer = observer
        self.audit = audit  # [audit] level = "client": canary clients join steps 10-11 (evaluator side)
        self.node_of: dict[int, int] = {}  # partition id -> node id
        self.partition_of: dict[int, int] = {}  # node id -> partition id
        self.cohort: Cohort | None = None
        self.record: RoundRecord | None = None
        self.client_metrics: list[dict[str, Any]] = []  # metrics of this round's valid replies
        self.valid_ids: tuple[int, ...] = ()  # partitions whose replies passed validation

    def set_nodes(self, partition_of: dict[int, int]) -> None:
        self.partition_of = dict(partition_of)
        self.node_of = {p: n for n, p in partition_of.items()}

    # ---- SAMPLING + TRAINING INSTRUCTIONS (SERVER → CLIENTAPP) ----
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        cohort = self.rt.sampler.sample(server_round)
        self.cohort = cohort
        self.client_metrics = []
        self.valid_ids = ()
        self.record = RoundRecord(round=server_round, clients_sampled=len(cohort.sampled),
                                  sampled=list(cohort.sampled), dropped=list(cohort.dropped),
                                  malicious=list(cohort.malicious))
        cfg = ConfigRecord({**dict(config), **self.rt.privacy.server_config(server_round),
                            "server-round": server_round})
        msgs = [Message(RecordDict({"arrays": arrays, "config": cfg}), dst_node_id=self.node_of[p],
                        message_type=MessageType.TRAIN) for p in cohort.live]
        self.record.bytes_down = int(arrays.count_bytes()) * len(msgs)
        return msgs

    # ---- AGGREGATION (SERVER SIDE) ----
    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self.record is not None and self.cohort is not None
        rec, rt = self.record, self.rt
        replies = list(replies)
        # 7. validate
        v = validate_replies(replies, spec=rt.compressor.spec(rt.layout, server_round),
                             partition_of=self.partition_of, expected=set(self.cohort.live))
        rec.clients_replied = len(replies)
        rec.rejected, rec.failed, rec.bytes_up = v.rejected, v.failed, v.bytes_up
        valid = v.valid
        self.client_metrics = [r.metrics for r in valid]
        self.valid_ids = tuple(r.partition_id for r in valid)
        if valid:
            losses = [r.metrics.get("train-loss", math.nan) for r in valid]
            rec.train_loss = float(sum(losses) / len(losses))
        releases_anyway = rt.privacy.releases_without_replies  # DP: a skipped round would reveal the count
        if len(valid) < max(rt.scenario.federation.min_replies, 1) and not releases_anyway:
            rec.metrics["round_skipped"] = f"{len(valid)} valid replies"
            return None, None
        gvec = flatten(self.model.state_dict(), rt.layout)
        ctx = RoundContext(server_round=server_round, seed=rt.scenario.seed, global_vector=gvec, layout=rt.layout,
                           client_ids=tuple(r.partition_id for r in valid),
                           num_examples=tuple(r.num_examples for r in valid), num_clients=rt.scenario.data.num_clients,
                           expected_clients_per_round=rt.sampler.expected_size)
        # DP-FedAvg's accounting assumes equal weights (a fixed-denominator mean of clipped updates)
        uniform = getattr(rt.privacy, "uniform_weights", False)
        weights = torch.tensor([1.0 if uniform else float(r.num_examples) for r in valid], device=gvec.device)
        payloads = [r.arrays for r in valid]
        # 8. desketch
        updates = None
        accepted: tuple[int, ...]
        scores: dict[int, float]
        if not valid:  # only with a mechanism that releases its noisy sum whatever the count
            update = torch.zeros_like(gvec)
            accepted, scores = (), {}
        elif rt.compressor.aggregates_in_sketch_space:
            update = rt.compressor.decode_aggregate(payloads, weights, ctx).to(gvec.device)
            accepted = ctx.client_ids
            scores = {}
        else:
            updates = rt.compressor.decode(payloads, ctx).to(gvec.device)
        # 9. observe
        if self.observer is not None:
            rec.metrics.update(self.observer(server_round, valid, updates, ctx))
        # 10. aggregate (with the audit's canary clients, if any, as extra rows)
        canary = CanaryRound()
        if updates is not None and valid:
            if self.audit is not None:
                updates, weights, ctx, canary = self.audit.join(server_round, updates, weights, ctx)
            res = self.aggregator.aggregate(updates, weights, ctx)
            update, accepted, scores = res.update, res.accepted, res.scores
        real_ids = set(self.valid_ids)
        rec.accepted = sorted(a for a in accepted if a in real_ids)
        rec.clients_aggregated = len(rec.accepted)
        if canary.ids:
            rec.metrics["audit_canaries"] = len(canary.ids)
        if scores:
            rec.metrics["scores"] = {str(k): float(s) for k, s in scores.items() if k in real_ids}
        # 11. noise
        update = rt.privacy.server_aggregate(update, [r.metrics for r in valid] + canary.metrics, ctx)
        for d in self.server_defenses:
            update = d.apply(update, ctx)
        if self.audit is not None:
            self.audit.observe(update, len(valid) + len(canary.ids))
        # 12. apply
        if not bool(torch.isfinite(update).all()):
            rec.metrics["round_skipped"] = "non-finite aggregate refused"
            return None, None
        load_vector(self.model, gvec + rt.scenario.federation.server_lr * update, rt.layout)
        return ArrayRecord(self.model.state_dict()), MetricRecord({"clients-aggregated": rec.clients_aggregated})

    # ---- EVALUATION: centralised on the server's test split (see server_app) ----
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        return None
