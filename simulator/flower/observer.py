"""The in-run inversion attack: DESIGN step 9, an honest-but-curious server attacking live updates.

At the rounds in ``attacks.inversion.rounds``, for every client of ``attacks.inversion.targets`` whose reply
passed validation, the server builds a :class:`~attacks.base.ServerView` from what it holds at that point of
the round — a private copy of the global model the client received, the client's update *as decoded by the
server* (after every client-side defense: DP noise, clipping, pruning, sketching) and the public protocol
facts it sets (local lr, epochs, steps, batch size; the client's reported example count) — and runs the
scenario's inversion attack on it (Geiping et al., NeurIPS 2020, Sec. 5 for FedAvg updates). Central DP noise
is added later (step 11), so it does not protect against this server, as in DP-FedAvg's threat model.

The evaluator side, apart from the attack, scores the reconstruction against the client's local training set
(:func:`simulator.experiment.attack_update`). Per round the record gets ``inversion_psnr``,
``inversion_ssim``, ``inversion_label_accuracy`` (means over the attacked clients) and ``inversion`` (per
client); the run summary gets an ``inversion`` block, and the runner saves one image grid per attack.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attacks.base import INVERSION_ATTACKS, InversionAttack, ProtocolInfo, PublicData, ServerView, SketchInfo
from attacks.metrics import aligned
from simulator.context import RoundContext
from simulator.experiment.leakage import attack_update
from simulator.flower.runtime import Runtime
from simulator.results import InversionRound
from simulator.round.validate import ValidReply
from simulator.scenario.attacks import InversionSpec

__all__ = ["AttackedUpdate", "InversionObserver"]


@dataclass
class AttackedUpdate:
    """One attacked update: where, the metrics, and the images for the grid (evaluator-side only)."""

    round: int
    client: int
    metrics: dict[str, Any]
    truth: torch.Tensor
    reconstruction: torch.Tensor


@dataclass
class InversionObserver:
    """Callable observer for :class:`~simulator.flower.strategy.PrivsimStrategy` (step 9)."""

    rt: Runtime
    model: nn.Module  # the server's global model; still the pre-aggregation model at step 9
    spec: InversionSpec = field(init=False)
    attack: InversionAttack = field(init=False)
    attacked: list[AttackedUpdate] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        spec = self.rt.scenario.attacks.inversion
        assert spec is not None
        self.spec = spec
        self.attack = INVERSION_ATTACKS.create(spec.name, spec.params)
        ds = self.rt.data
        public = None
        if (
            self.attack.needs_public_data
        ):  # the server's held-out test split: disjoint from every client's data
            public = PublicData(
                x=ds.test.x, y=ds.test.y, source=f"the server's test split ({len(ds.test)} images)"
            )
        self.attack.prepare(
            public,
            model=copy.deepcopy(self.model).cpu(),
            input_shape=tuple(ds.input_shape),
            num_classes=ds.num_classes,
        )

    def _protocol(self, reply: ValidReply) -> ProtocolInfo:
        f = self.rt.scenario.federation
        return ProtocolInfo(
            kind="update",
            lr=f.lr,
            local_steps=f.local_steps,
            local_epochs=f.local_epochs,
            batch_size=f.batch_size,
            num_examples=int(reply.num_examples),
        )

    def _update_of(
        self, i: int, reply: ValidReply, updates: torch.Tensor | None, ctx: RoundContext
    ) -> tuple[torch.Tensor | None, SketchInfo | None]:
        comp = self.rt.compressor
        if self.attack.wants_sketch:  # the raw sketch and what the server knows of R (shared seed, round)
            if not comp.is_sketch or "sketch" not in reply.arrays:
                return None, None
            y = reply.arrays["sketch"].detach().float().cpu().reshape(-1)
            c = self.rt.scenario.compression
            return y, SketchInfo(
                operator=c.name,
                seed=ctx.seed,
                sketch_dim=int(y.numel()),
                params=dict(c.params),
                server_round=ctx.server_round,
                dim=ctx.layout.dim,
            )
        if updates is not None:
            return updates[i], None
        if comp.decodes_alone:  # linear and stateless: one client's payload decodes alone
            one = dataclasses.replace(
                ctx, client_ids=(reply.partition_id,), num_examples=(reply.num_examples,)
            )
            return comp.decode([reply.arrays], one)[0], None
        return None, None

    def __call__(
        self, server_round: int, valid: list[ValidReply], updates: torch.Tensor | None, ctx: RoundContext
    ) -> InversionRound | None:
        if server_round not in self.spec.rounds:
            return None
        sampled = {r.partition_id: i for i, r in enumerate(valid)}
        per_client: dict[int, dict[str, float | None]] = {}
        for pid in self.spec.targets:
            if pid not in sampled:
                self.skipped.append(
                    {"round": server_round, "client": pid, "reason": "no valid reply this round"}
                )
                continue
            i = sampled[pid]
            reply = valid[i]
            update, sketch = self._update_of(i, reply, updates, ctx)
            if update is None:
                why = (
                    "attack matches in sketch space but the reply carries no sketch"
                    if self.attack.wants_sketch
                    else f"compressor {self.rt.scenario.compression.name!r} aggregates in sketch space; "
                    f"no per-client update to attack"
                )
                self.skipped.append({"round": server_round, "client": pid, "reason": why})
                continue
            ds = self.rt.data
            dev = self.rt.scenario.simulation.device if self.attack.runs_on_device else "cpu"
            view = ServerView(
                model=copy.deepcopy(self.model).to(dev),
                payload=update.detach().to(dev).clone(),
                protocol=self._protocol(reply),
                input_shape=tuple(ds.input_shape),
                num_classes=ds.num_classes,
                sketch=sketch,
                metrics=dict(reply.metrics),
            )
            truth_x, truth_y = ds.client(pid)  # evaluator side: never reaches the attack
            recon, m = attack_update(self.attack, view, truth_x, truth_y)
            keep = self.spec.max_images
            self.attacked.append(
                AttackedUpdate(
                    server_round,
                    pid,
                    m,
                    truth_x[:keep].cpu(),
                    aligned(recon.images, truth_x, m["order"])[:keep],
                )
            )
            per_client[pid] = {k: m[k] for k in ("psnr", "ssim", "mse", "label_accuracy", "attack_time_s")}
        if not per_client:
            return None
        vals = list(per_client.values())
        return InversionRound(
            per_client,
            psnr=_mean([v["psnr"] for v in vals]),
            ssim=_mean([v["ssim"] for v in vals]),
            label_accuracy=_mean([v["label_accuracy"] for v in vals]),
        )

    def summary(self) -> dict[str, Any]:
        """The ``inversion`` block of summary.json."""
        ms = [a.metrics for a in self.attacked]
        return {
            "attack": self.spec.name,
            "targets": list(self.spec.targets),
            "rounds": list(self.spec.rounds),
            "attacked": len(ms),
            "psnr": _mean([m["psnr"] for m in ms]),
            "ssim": _mean([m["ssim"] for m in ms]),
            "label_accuracy": _mean([m["label_accuracy"] for m in ms]),
            "per_attack": [
                {
                    "round": a.round,
                    "client": a.client,
                    "psnr": a.metrics["psnr"],
                    "ssim": a.metrics["ssim"],
                    "label_accuracy": a.metrics["label_accuracy"],
                }
                for a in self.attacked
            ],
            "skipped": self.skipped,
        }


def _mean(xs: list[float | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None and not math.isnan(float(x))]
    return sum(vals) / len(vals) if vals else None
