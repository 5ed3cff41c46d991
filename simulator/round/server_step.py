"""The server step of a round, DESIGN.md steps 8-12, as one function every engine calls.

7. validate   :func:`simulator.round.validate.validate_replies` (before this step)
8. desketch   the compressor turns payloads back into per-client updates (or their aggregate in sketch space)
   root       an aggregator that ``needs_root_update`` (FLTrust) gets the server's own update on its root set
              in ``ctx.root_update`` (``ServerPlugins.root_update`` computes it)
   poison     a :class:`Poisoner`, if configured, replaces the acting attackers' rows with crafted updates
   adapt      an :class:`Adapter` (a defense-aware backdoor, ``adaptive``) replaces them with reshaped ones
9. observe    an observer (the in-run inversion attack) sees the decoded updates of the round, if configured
10. aggregate the aggregator over the full list → update, accepted ids, per-client scores (audit canaries
    join)
11. noise     server-side privacy (central DP on the aggregate), then the server defenses
12. apply     w_global + η_server · update; a non-finite aggregate is refused and the model stays unchanged

The Flower strategy (:mod:`simulator.flower.strategy`) is a thin adapter around :func:`server_step`; the warm
start and the compressor harness call it directly.

The poisoning stage (``[attacks.poisoning]``, untargeted model poisoning) is a simulation device: the acting
attackers sent honest updates through the normal client step, and here, after decoding, their rows (the
evaluator's ground truth list ``malicious`` the engine passes in) are replaced by updates crafted from the
benign rows (``knowledge = "omniscient"``) or from the attackers' own honest rows (``"partial"``). That is
equivalent to colluding attackers who know those updates and send the crafted ones; the observer, the
aggregator and the defenses see only the resulting update matrix, with no flag (see
:mod:`attacks.poisoning.plugins`).

The adaptation stage (a defense-aware client attack, :class:`attacks.base.DefenseAware`, e.g. the
``adaptive`` backdoor) is the same device for backdoors: the acting attackers trained their backdoor through
the client step; here their rows are replaced by the attack's
:meth:`~attacks.base.DefenseAware.adapt` of them, given the benign rows and a probe that runs the rule they
adapt to (a deep copy of the server's aggregator, or of the rule they name) on the round with their rows
replaced.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from attacks.base import (
    POISONING_ATTACKS,
    ClientAttack,
    DefenseAware,
    PoisoningAttack,
    Verdict,
    defense_aware,
)
from defenses.aggregation.fedavg import FedAvg
from defenses.base import AGGREGATORS, Aggregator, ServerDefense
from simulator.context import RoundContext, make_generator
from simulator.dp.mechanism import NoPrivacy, PrivacyMechanism
from simulator.registry import import_plugins
from simulator.results import InversionRound
from simulator.round.audit import CanaryRound, ClientAudit
from simulator.round.secure_sum import SecureSum, SecureSumAborted
from simulator.round.validate import ValidReply
from simulator.scenario.base import PluginSpec
from simulator.sketching.base import Compressor, Identity

__all__ = [
    "Adapted",
    "Adapter",
    "Observer",
    "Poisoned",
    "Poisoner",
    "RootUpdate",
    "RoundOutcome",
    "ServerPlugins",
    "decode_updates",
    "round_weights",
    "server_step",
]

#: step 9: (round, valid replies, per-client updates or None, round context) -> what the attack achieved, if
#: it ran
Observer = Callable[[int, list[ValidReply], "torch.Tensor | None", RoundContext], InversionRound | None]
#: after step 8: (round context) -> the server's own update on its root set this round (FLTrust's g₀)
RootUpdate = Callable[[RoundContext], torch.Tensor]


@dataclass(frozen=True)
class Poisoned:
    """What the poisoning stage did: the update matrix after it, the partition ids whose rows it replaced, and
    why it left the round alone (None: it replaced them, or there was nothing to replace)."""

    updates: torch.Tensor
    replaced: tuple[int, ...] = ()
    skipped: str | None = None


@dataclass(frozen=True)
class Poisoner:
    """The poisoning stage (after step 8): a :class:`~attacks.base.PoisoningAttack` run for the round's acting
    attackers, as colluding attackers who know the updates it uses (a simulation device; see the module
    docstring).

    ``target`` is the aggregator an AGR-tailored attack names (built once, from ``AGGREGATORS``); without
    one, the attack's ``agr`` simulates the server's own aggregator in its current state. Every ``agr`` call
    runs on a deep copy, so the attackers' probes never change the aggregator's state (FoolsGold's history,
    Centered Clipping's centre ...).
    """

    attack: PoisoningAttack
    target: Aggregator | None = None

    @classmethod
    def from_spec(cls, spec: PluginSpec) -> Poisoner:
        """The poisoner of a scenario's ``[attacks.poisoning]`` section."""
        import_plugins()
        attack = POISONING_ATTACKS.create(spec.name, spec.params)
        t = attack.target_aggregator
        return cls(attack, AGGREGATORS.create(t[0], t[1]) if t is not None else None)

    def poison(
        self,
        updates: torch.Tensor,
        weights: torch.Tensor,
        ctx: RoundContext,
        malicious: Sequence[int],
        aggregator: Aggregator,
    ) -> Poisoned:
        """Replace the rows of ``updates`` (rows follow ``ctx.client_ids``) that belong to ``malicious``.

        ``benign`` = the other rows, ``own`` = the attackers' honest rows; the attack picks what it knows.
        A round whose known rows are too few for the attack (ALIE's σ needs two) is left unchanged, with the
        reason in ``skipped``."""
        bad = set(malicious)
        mal = [i for i, cid in enumerate(ctx.client_ids) if cid in bad]
        if not mal:
            return Poisoned(updates)
        ben = [i for i, cid in enumerate(ctx.client_ids) if cid not in bad]
        attack = self.attack
        benign, own = updates[ben], updates[mal]
        known = attack.known(benign, own)
        if known.shape[0] < attack.min_known:
            why = (
                f"{known.shape[0]} known update(s), {type(attack).__name__} needs {attack.min_known}: "
                "the attackers sent their honest updates"
            )
            return Poisoned(updates, skipped=why)
        known_rows = ben if known is benign else mal  # known() returns one of its two arguments
        agr = _agr(self.target if self.target is not None else aggregator, ctx, weights, mal, known_rows)
        crafted = attack.craft(
            benign,
            own,
            num_malicious=len(mal),
            generator=make_generator(ctx.seed, ctx.server_round, "poisoning"),
            agr=agr,
            global_vector=ctx.global_vector,
        )
        if tuple(crafted.shape) != (len(mal), updates.shape[1]):
            raise ValueError(
                f"{type(attack).__name__}.craft returned shape {tuple(crafted.shape)}, expected "
                f"{(len(mal), updates.shape[1])}"
            )
        out = updates.clone()
        out[mal] = crafted.to(device=updates.device, dtype=updates.dtype)
        return Poisoned(out, replaced=tuple(ctx.client_ids[i] for i in mal))


def _agr(
    aggregator: Aggregator, ctx: RoundContext, weights: torch.Tensor, mal: list[int], known: list[int]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``agr(updates) -> aggregate`` over a probe matrix ``[crafted × f; known rows]``: a deep copy of
    ``aggregator`` per call, with the rows' client ids and weights (a known row that is an attacker's own
    honest update gets a fresh id ``num_clients + j``, never a real partition). A matrix of another size gets
    fresh ids and unit weights."""
    ids = [ctx.client_ids[i] for i in mal]
    taken = set(ids)
    for j, i in enumerate(known):
        cid = ctx.client_ids[i]
        ids.append(cid if cid not in taken else ctx.num_clients + j)
    rows = mal + known
    w = weights[rows]
    ne = tuple(ctx.num_examples[i] for i in rows) if len(ctx.num_examples) == len(ctx.client_ids) else ()

    def agr(u: torch.Tensor) -> torch.Tensor:
        m = u.shape[0]
        if m == len(ids) and len(ne) == m:
            c = dataclasses.replace(ctx, client_ids=tuple(ids), num_examples=ne)
            ww = w
        else:
            c = dataclasses.replace(
                ctx, client_ids=tuple(range(ctx.num_clients, ctx.num_clients + m)), num_examples=(1,) * m
            )
            ww = torch.ones(m, device=weights.device, dtype=weights.dtype)
        return copy.deepcopy(aggregator).aggregate(u, ww, c).update

    return agr


@dataclass(frozen=True)
class Adapted:
    """What the adaptation stage did: the update matrix after it, the partition ids whose rows it replaced,
    the share of their backdoor update kept (``mix``), whether the rows pass the rule in the attackers'
    simulation, and why it left the round alone (None: it ran, or there was nothing to adapt)."""

    updates: torch.Tensor
    replaced: tuple[int, ...] = ()
    mix: float | None = None
    passes: bool | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class Adapter:
    """The adaptation stage (after step 8): a defense-aware client attack
    (:class:`~attacks.base.DefenseAware`) reshapes the acting attackers' rows to pass ``rule``, knowing the
    round's benign rows (a simulation device; see the module docstring).

    ``target`` is the rule the attack names (built once, from ``AGGREGATORS``); without one (no rule named, or
    the server's rule named without params) the probes run the server's own aggregator in its current state.
    Every probe runs on a deep copy, so the server's state never changes. ``rule`` is the registry name of the
    rule adapted to (the attack shapes its rows per rule)."""

    attack: DefenseAware
    rule: str
    target: Aggregator | None = None

    @classmethod
    def for_attack(cls, attack: ClientAttack | None, aggregator: str) -> Adapter | None:
        """The adapter of a run whose client attack is (or wraps) a defense-aware attack, else None;
        ``aggregator`` is the registry name of the server's aggregator."""
        found = defense_aware(attack)
        if found is None:
            return None
        t = found.target_aggregator
        if t is None or (t[0] == aggregator and t[1] is None):  # the server's own instance
            return cls(found, aggregator)
        import_plugins()
        return cls(found, t[0], AGGREGATORS.create(t[0], t[1] or {}))

    def adapt(
        self,
        updates: torch.Tensor,
        weights: torch.Tensor,
        ctx: RoundContext,
        malicious: Sequence[int],
        aggregator: Aggregator,
    ) -> Adapted:
        """Replace the rows of ``updates`` (rows follow ``ctx.client_ids``) that belong to ``malicious``."""
        bad = set(malicious)
        mal = [i for i, cid in enumerate(ctx.client_ids) if cid in bad]
        if not mal:
            return Adapted(updates)
        ben = [i for i, cid in enumerate(ctx.client_ids) if cid not in bad]
        if not ben:
            why = "no benign update to adapt to: the attackers sent theirs unchanged"
            return Adapted(updates, skipped=why)
        rule_agg = self.target if self.target is not None else aggregator
        ids = [ctx.client_ids[i] for i in mal]

        def probe(rows: torch.Tensor) -> Verdict:
            u = updates.clone()
            u[mal] = rows.to(device=u.device, dtype=u.dtype)
            res = copy.deepcopy(rule_agg).aggregate(u, weights, ctx)
            kept = set(res.accepted)
            return Verdict(
                tuple(c in kept for c in ids), tuple(float(res.scores.get(c, math.nan)) for c in ids)
            )

        out = self.attack.adapt(updates[ben], updates[mal], rule=self.rule, probe=probe)
        if tuple(out.updates.shape) != (len(mal), updates.shape[1]):
            raise ValueError(
                f"{type(self.attack).__name__}.adapt returned shape {tuple(out.updates.shape)}, expected "
                f"{(len(mal), updates.shape[1])}"
            )
        new = updates.clone()
        new[mal] = out.updates.to(device=updates.device, dtype=updates.dtype)
        return Adapted(new, replaced=tuple(ids), mix=out.mix, passes=out.passes)


@dataclass(frozen=True)
class ServerPlugins:
    """The plug-ins the server runs; the defaults are plain FedAvg (McMahan et al., AISTATS 2017)."""

    compressor: Compressor = field(default_factory=Identity)
    aggregator: Aggregator = field(default_factory=FedAvg)
    privacy: PrivacyMechanism = field(default_factory=NoPrivacy)
    defenses: Sequence[ServerDefense] = ()
    observer: Observer | None = None
    audit: ClientAudit | None = None  # [audit] level = "client": canary clients join steps 10-11
    poisoner: Poisoner | None = None  # [attacks.poisoning]: the acting attackers' crafted updates (after 8)
    secure_sum: SecureSum | None = None  # [secure_aggregation]: plug-ins see the sum alone
    # the server's own update on its root set, for an aggregator that needs_root_update (FLTrust)
    root_update: RootUpdate | None = None
    adapter: Adapter | None = None  # a defense-aware backdoor: the attackers' reshaped updates (after 8)


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
    poisoned: tuple[int, ...] = ()  # partition ids whose updates the poisoning stage replaced
    poisoning_skipped: str | None = None  # why the poisoning stage left this round's attackers honest
    adapted: Adapted | None = None  # what the adaptation stage did (a defense-aware backdoor), if it ran


def round_weights(
    valid: Sequence[ValidReply], privacy: PrivacyMechanism, device: torch.device
) -> torch.Tensor:
    """Each reply's aggregation weight: its example count, or 1 when the privacy mechanism's accounting
    assumes equal weights (DP-FedAvg: a fixed-denominator mean of clipped updates)."""
    return torch.tensor(
        [1.0 if privacy.uniform_weights else float(r.num_examples) for r in valid], device=device
    )


def decode_updates(
    compressor: Compressor, payloads: list[dict[str, torch.Tensor]], weights: torch.Tensor, ctx: RoundContext
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Step 8: ``(per-client updates (n, d), None)``, or ``(None, aggregate (d,))`` for a compressor that
    aggregates in sketch space (the per-client updates never exist on the server)."""
    device = ctx.global_vector.device
    if compressor.aggregates_in_sketch_space:
        return None, compressor.decode_aggregate(payloads, weights, ctx).to(device)
    return compressor.decode(payloads, ctx).to(device), None


def server_step(
    valid: list[ValidReply],
    ctx: RoundContext,
    plugins: ServerPlugins,
    *,
    server_lr: float,
    min_replies: int = 1,
    malicious: Sequence[int] = (),
) -> RoundOutcome:
    """Steps 8-12 over the round's valid replies (sorted by partition id, the rows of ``ctx.client_ids``);
    ``ctx.global_vector`` is the model the clients received. ``malicious`` lists the round's acting attackers
    (the evaluator's ground truth; only the poisoning stage reads it, never the server's plug-ins)."""
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
    # 8a. root: the server's own update on its root set (FLTrust), before the attackers' simulations need it
    if updates is not None and plugins.secure_sum is None and plugins.aggregator.needs_root_update:
        if plugins.root_update is None:
            raise ValueError(
                f"{type(plugins.aggregator).__name__} needs the server's root update (needs_root_update) and "
                "the engine gave no root_update to the server step"
            )
        ctx = dataclasses.replace(ctx, root_update=plugins.root_update(ctx).to(gvec.device))
    # 8b. poison (a simulation of colluding attackers; the plug-ins below see only the resulting matrix)
    poisoned: Poisoned | None = None
    if plugins.poisoner is not None and malicious and valid:
        if updates is None:
            raise ValueError(
                "the poisoning stage needs per-client updates; the compressor aggregates in "
                "sketch space (the scenario checks refuse this combination)"
            )
        poisoned = plugins.poisoner.poison(updates, weights, ctx, malicious, plugins.aggregator)
        updates = poisoned.updates
    # 8b'. adapt (the same device for a defense-aware backdoor: the attackers' rows, reshaped)
    adapted: Adapted | None = None
    if plugins.adapter is not None and malicious and valid:
        if updates is None:
            raise ValueError(
                "the adaptive backdoor needs per-client updates; the compressor aggregates in sketch space "
                "(the scenario checks refuse this combination)"
            )
        adapted = plugins.adapter.adapt(updates, weights, ctx, malicious, plugins.aggregator)
        updates = adapted.updates
    # 8c. secure aggregation: from here on the server holds SecAgg+'s decoded weighted mean,
    # nothing per client
    if plugins.secure_sum is not None and updates is not None:
        if len(valid) < 2:
            return RoundOutcome(
                None, skipped=f"secure aggregation needs 2 surviving clients, {len(valid)} replied"
            )
        try:
            (update, accepted), updates = plugins.secure_sum(updates, weights, ctx), None
        except SecureSumAborted as e:
            return RoundOutcome(None, skipped=f"secure aggregation aborted: {e}")
    # 9. observe
    observed = (
        plugins.observer(ctx.server_round, valid, updates, ctx) if plugins.observer is not None else None
    )
    # 10. aggregate (with the audit's canary clients, if any, as extra rows)
    real = set(ctx.client_ids)
    canary = CanaryRound()
    if updates is not None:
        if plugins.audit is not None:  # from here on the context lists the canaries too (ids −1 − j)
            updates, weights, ctx, canary = plugins.audit.join(ctx.server_round, updates, weights, ctx)
        res = plugins.aggregator.aggregate(updates, weights, ctx)
        update, accepted, scores = res.update, res.accepted, res.scores
    out = RoundOutcome(
        None,
        accepted=sorted(a for a in accepted if a in real),
        scores={k: float(s) for k, s in scores.items() if k in real},
        observed=observed,
        canaries=len(canary.ids),
        poisoned=poisoned.replaced if poisoned else (),
        poisoning_skipped=poisoned.skipped if poisoned else None,
        adapted=adapted,
    )
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
