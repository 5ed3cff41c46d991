"""The server step of a round, DESIGN.md steps 8-12, as one function every engine calls.

7. validate   :func:`simulator.round.validate.validate_replies` (before this step)
8. desketch   the compressor turns payloads back into per-client updates (or their aggregate in sketch space)
9. observe    an observer (the in-run inversion attack) sees the decoded updates of the round, if configured
10. aggregate the aggregator over the full list → update, accepted ids, per-client scores (audit canaries join)
11. noise     server-side privacy (central DP on the aggregate), then the server defenses
12. apply     w_global + η_server · update; a non-finite aggregate is refused and the model stays unchanged

The Flower strategy (:mod:`simulator.flower.strategy`) is a thin adapter around :func:`server_step`; the warm
start and the compressor harness call it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from defenses.aggregation.fedavg import FedAvg
from defenses.base import Aggregator, ServerDefense
from simulator.context import RoundContext
from simulator.dp.mechanism import NoPrivacy, PrivacyMechanism
from simulator.results import InversionRound
from simulator.round.audit import CanaryRound, ClientAudit
from simulator.round.validate import ValidReply
from simulator.sketching.base import Compressor, Identity

__all__ = ["Observer", "RoundOutcome", "ServerPlugins", "decode_updates", "round_weights", "server_step"]

#: step 9: (round, valid replies, per-client updates or None, round context) -> what the attack achieved, if it ran
Observer = Callable[[int, list[ValidReply], "torch.Tensor | None", RoundContext], InversionRound | None]


@dataclass(frozen=True)
class ServerPlugins:
    """The plug-ins the server runs; the defaults are plain FedAvg (McMahan et al., AISTATS 2017)."""

    compressor: Compressor = field(default_factory=Identity)
    aggregator: Aggregator = field(default_factory=FedAvg)
    privacy: PrivacyMechanism = field(default_factory=NoPrivacy)
    defenses: Sequence[ServerDefense] = ()
    observer: Observer | None = None
    audit: ClientAudit | None = None  # [audit] level = "client": canary clients join steps 10-11


@dataclass
class RoundOutcome:
    """What a round's server step produced: the new global vector (None: the model stays unchanged, with the
    reason in ``skipped``), the accepted real clients, their scores and what the observer reported."""

    new_global: torch.Tensor | None
    accepted: list[int] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)
    observed: InversionRound | None = None
    canaries: int = 0
    skipped: str | None = None


def round_weights(valid: Sequence[ValidReply], privacy: PrivacyMechanism, device: torch.device) -> torch.Tensor:
    """Each reply's aggregation weight: its example count, or 1 when the privacy mechanism's accounting assumes
    equal weights (DP-FedAvg: a fixed-denominator mean of clipped updates)."""
    return torch.tensor([1.0 if privacy.uniform_weights else float(r.num_examples) for r in valid], device=device)


def decode_updates(compressor: Compressor, payloads: list[dict[str, torch.Tensor]], weights: torch.Tensor,
                   ctx: RoundContext) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Step 8: ``(per-client updates (n, d), None)``, or ``(None, aggregate (d,))`` for a compressor that
    aggregates in sketch space (the per-client updates never exist on the server)."""
    device = ctx.global_vector.device
    if compressor.aggregates_in_sketch_space:
        return None, compressor.decode_aggregate(payloads, weights, ctx).to(device)
    return compressor.decode(payloads, ctx).to(device), None


def server_step(valid: list[ValidReply], ctx: RoundContext, plugins: ServerPlugins, *, server_lr: float,
                min_replies: int = 1) -> RoundOutcome:
    """Steps 8-12 over the round's valid replies (sorted by partition id, the rows of ``ctx.client_ids``);
    ``ctx.global_vector`` is the model the clients received."""
    privacy = plugins.privacy
    gvec = ctx.global_vector
    if len(valid) < max(min_replies, 1) and not privacy.releases_without_replies:
        # a DP mechanism that releases its noisy sum whatever the count goes on: a skip would reveal the count
        return RoundOutcome(None, skipped=f"{len(valid)} valid replies")
    weights = round_weights(valid, privacy, gvec.device)
    # 8. desketch
    updates: torch.Tensor | None = None
    accepted: tuple[int, ...] = ()
    scores: dict[int, float] = {}
    if not valid:  # only with a mechanism that releases its noisy sum whatever the count
        update = torch.zeros_like(gvec)
    else:
        updates, summed = decode_updates(plugins.compressor, [r.arrays for r in valid], weights, ctx)
        if summed is not None:
            update, accepted = summed, ctx.client_ids
    # 9. observe
    observed = plugins.observer(ctx.server_round, valid, updates, ctx) if plugins.observer is not None else None
    # 10. aggregate (with the audit's canary clients, if any, as extra rows)
    real = set(ctx.client_ids)
    canary = CanaryRound()
    if updates is not None:
        if plugins.audit is not None:  # from here on the context lists the canaries too (ids −1 − j)
            updates, weights, ctx, canary = plugins.audit.join(ctx.server_round, updates, weights, ctx)
        res = plugins.aggregator.aggregate(updates, weights, ctx)
        update, accepted, scores = res.update, res.accepted, res.scores
    out = RoundOutcome(None, accepted=sorted(a for a in accepted if a in real),
                        scores={k: float(s) for k, s in scores.items() if k in real}, observed=observed,
                        canaries=len(canary.ids))
    # 11. noise
    update = privacy.server_aggregate(update, [r.metrics for r in valid] + canary.metrics, ctx)
    for d in plugins.defenses:
        update = d.apply(update, ctx)
    if plugins.audit is not None:
        plugins.audit.observe(update, len(valid) + len(canary.ids))
    # 12. apply
    if not bool(torch.isfinite(update).all()):
        out.skipped = "non-finite aggregate refused"
        return out
    out.new_global = gvec + server_lr * update
    return out
