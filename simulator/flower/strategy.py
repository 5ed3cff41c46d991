"""PrivsimStrategy: Flower's FedAvg as a thin adapter around the round core's server side.

``configure_train`` samples partitions from the seeded sampler (fixed-size or Poisson, attackers
guaranteed when the plan says so, stragglers dropped) instead of FedAvg's ``random.sample``;
``aggregate_train`` unpacks the replies, drops those past ``federation.deadline_s`` in simulated time
(:func:`simulator.round.apply_deadline`), validates the rest (step 7,
:func:`simulator.round.validate_replies`), runs :func:`simulator.round.server_step` (steps 8-12) and writes
the round's record.

The strategy also builds the server-side simulation stages the scenario asks for: the poisoning stage
(``[attacks.poisoning]``), the adaptation stage of a defense-aware backdoor (``adaptive``), and, for an
aggregator that ``needs_root_update`` (FLTrust), the server's own update on its root set
(:class:`RootTrainer`, given the root examples by the ServerApp with :meth:`PrivsimStrategy.use_root`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from defenses.base import Aggregator, ServerDefense
from simulator.context import RoundContext, make_generator
from simulator.flat import Layout, flatten, load_vector, model_vector
from simulator.flower.nodes import NodeMap
from simulator.flower.replies import unpack_replies
from simulator.flower.runtime import Runtime
from simulator.latency import LatencyModel
from simulator.results import RoundRecord
from simulator.round import (
    Adapter,
    Observer,
    Poisoner,
    ServerPlugins,
    apply_deadline,
    server_step,
    validate_replies,
)
from simulator.round.audit import ClientAudit
from simulator.round.secure_sum import SecureSum
from simulator.sampling import Cohort
from simulator.sketching.comm import dense_bytes
from simulator.training import LocalTrainConfig, train_local

__all__ = ["PrivsimStrategy", "RootTrainer"]


class RootTrainer:
    """The server's own update on its clean root set (FLTrust's g₀; Cao et al., NDSS 2021): a private copy of
    the model, loaded with the round's global model, trained with the clients' local recipe
    (:class:`~simulator.training.LocalTrainConfig`: optimizer, lr, epochs, batch size, step cap) on the root
    examples, with training randomness seeded by (scenario seed, round); returns ``w − w_global``. Plain SGD
    even when the clients run DP-SGD: the root set is the server's own data."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        train: LocalTrainConfig,
        *,
        seed: int,
        layout: Layout,
    ) -> None:
        self.model = copy.deepcopy(model)
        self.x, self.y, self.train, self.seed, self.layout = x, y, train, seed, layout

    def __call__(self, ctx: RoundContext) -> torch.Tensor:
        load_vector(self.model, ctx.global_vector, self.layout)
        train_local(
            self.model,
            self.x,
            self.y,
            self.train,
            generator=make_generator(self.seed, ctx.server_round, "fltrust-root"),
        )
        return model_vector(self.model, self.layout) - ctx.global_vector


class PrivsimStrategy(FedAvg):
    """FedAvg whose sampling and aggregation are privsim's (see the module docstring)."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        model: nn.Module,
        aggregator: Aggregator,
        server_defenses: list[ServerDefense],
        observer: Observer | None = None,
        audit: ClientAudit | None = None,
        secure_sum: SecureSum | None = None,
    ) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,  # unused (configure_evaluate sends nothing); 0.0 makes Flower warn
            min_train_nodes=1,
            min_evaluate_nodes=0,
            min_available_nodes=1,
            weighted_by_key="num-examples",
        )
        self.rt = runtime
        self.model = model  # the server's own copy of the global model
        poisoning = runtime.scenario.attacks.poisoning
        self.plugins = ServerPlugins(
            compressor=runtime.compressor,
            aggregator=aggregator,
            privacy=runtime.privacy,
            defenses=tuple(server_defenses),
            observer=observer,
            audit=audit,
            secure_sum=secure_sum,
            poisoner=Poisoner.from_spec(poisoning) if poisoning is not None else None,
            adapter=Adapter.for_attack(runtime.attack, runtime.scenario.defenses.aggregator.name),
        )
        self.nodes = NodeMap.empty()  # node id -> its partitions (one or a group, see simulator.flower.nodes)
        self.sent: dict[int, list[int]] = {}  # node id -> the partitions it was asked to train this round
        self.cohort: Cohort | None = None
        self.record: RoundRecord | None = None
        self.client_metrics: list[dict[str, Any]] = []  # metrics of this round's valid replies
        self.valid_ids: tuple[int, ...] = ()  # partitions whose replies passed validation

    def use_root(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Give the server its root set: from now on every round's server step gets the server's own update
        on it (``ctx.root_update``), for an aggregator that ``needs_root_update``."""
        root = RootTrainer(self.model, x, y, self.rt.train, seed=self.rt.scenario.seed, layout=self.rt.layout)
        self.plugins = dataclasses.replace(self.plugins, root_update=root)

    def set_nodes(self, nodes: NodeMap) -> None:
        self.nodes = nodes

    # ---- SAMPLING + TRAINING INSTRUCTIONS (SERVER → CLIENTAPP) ----
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        cohort = self.rt.sampler.sample(server_round)
        self.cohort = cohort
        self.client_metrics = []
        self.valid_ids = ()
        self.record = RoundRecord(
            round=server_round,
            clients_sampled=len(cohort.sampled),
            sampled=list(cohort.sampled),
            dropped=list(cohort.dropped),
            malicious=list(cohort.malicious),
        )
        cfg = ConfigRecord(
            {**dict(config), **self.rt.privacy.server_config(server_round), "server-round": server_round}
        )
        self.sent = self.nodes.group(cohort.live)
        msgs = [
            Message(
                RecordDict({"arrays": arrays, "config": ConfigRecord({**dict(cfg), "partitions": pids})}),
                dst_node_id=node,
                message_type=MessageType.TRAIN,
            )
            for node, pids in self.sent.items()
        ]
        # what each client downloads (a node playing several clients is a simulation device, not a saving)
        # array data only (as bytes_up counts it), not Flower's names and .npy headers
        self.record.bytes_down = sum(int(a.numpy().nbytes) for a in arrays.values()) * len(cohort.live)
        return msgs

    # ---- AGGREGATION (SERVER SIDE): steps 7-12 of the round core ----
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self.record is not None and self.cohort is not None
        rec, rt = self.record, self.rt
        replies = list(replies)
        received = unpack_replies(replies, self.sent)
        # 6½. deadline ([federation.latency], deadline_s): replies later than it in simulated time are dropped
        candidates, rec.late, rec.simulated_seconds = apply_deadline(
            received,
            LatencyModel.for_federation(rt.scenario.federation, rt.scenario.seed),
            server_round,
            rec.bytes_down // max(len(self.cohort.live), 1),
            rt.scenario.federation.deadline_s,
            missing=len(self.cohort.sampled) - len(received),
        )
        # 7. validate
        v = validate_replies(
            candidates,
            spec=rt.compressor.spec(rt.layout, server_round),
            expected=set(self.cohort.live),
        )
        rec.clients_replied = len(received)
        rec.rejected, rec.failed, rec.bytes_up = v.rejected, v.failed, v.bytes_up
        rec.dense_bytes_up = dense_bytes(rt.layout) * len(v.valid)
        rec.dense_bytes_down = dense_bytes(rt.layout) * len(self.cohort.live)
        valid = v.valid
        self.client_metrics = [r.metrics for r in valid]
        self.valid_ids = tuple(r.partition_id for r in valid)
        if valid:
            losses = [r.metrics.get("train-loss", math.nan) for r in valid]
            rec.train_loss = float(sum(losses) / len(losses))
        gvec = flatten(self.model.state_dict(), rt.layout)
        ctx = RoundContext(
            server_round=server_round,
            seed=rt.scenario.seed,
            global_vector=gvec,
            layout=rt.layout,
            client_ids=self.valid_ids,
            num_examples=tuple(r.num_examples for r in valid),
            num_clients=rt.scenario.data.num_clients,
            expected_clients_per_round=rt.sampler.expected_size,
        )
        # 8-12
        out = server_step(
            valid,
            ctx,
            self.plugins,
            server_lr=rt.scenario.federation.server_lr,
            min_replies=rt.scenario.federation.min_replies,
            malicious=self.cohort.malicious,
        )
        rec.inversion = out.observed
        rec.poisoned, rec.poisoning_skipped = list(out.poisoned), out.poisoning_skipped
        if out.adapted is not None and out.adapted.replaced:
            rec.adapted, rec.adapt_mix = list(out.adapted.replaced), out.adapted.mix
        rec.accepted = out.accepted
        rec.clients_aggregated = len(out.accepted)
        rec.audit_canaries = out.canaries
        rec.scores = out.scores
        if out.new_global is None:
            rec.skipped = out.skipped
            return None, None
        load_vector(self.model, out.new_global, rt.layout)
        return ArrayRecord(self.model.state_dict()), MetricRecord(
            {"clients-aggregated": rec.clients_aggregated}
        )

    # ---- EVALUATION: centralised on the server's test split (see server_app) ----
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        return None
