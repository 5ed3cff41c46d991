"""The privacy ledger: every release a run makes, as dp-accounting events, per server view.

A run's ε is computed from what actually ran, never from scenario-level formulas. Each mechanism appends one
dp-accounting :class:`~dp_accounting.dp_event.DpEvent` per release (an aggregate, an update seen in the clear,
a sketch, a clipped count) to every *view* the scenario allows:

* ``aggregate`` — an observer of the released aggregates (the model sequence);
* ``update_in_clear`` — a server that reads each client's reply (no secure aggregation);
* ``forced_target`` — a client the server forces into a round (no sampling amplification there);
* ``records`` — a client's own records under record-level DP.

An event's noise multiplier is always *noise std / L2 distance between the released statistic on two
neighbouring inputs under the view's relation*: a clipped update moves a sum by ``C`` when a client is added
or removed and by ``2C`` when it is replaced. Each view lists the relation to hand dp-accounting
(``dp_accounting_relation``, see :func:`computation_relation`) so that its accountants read the multipliers
that way. A release without noise is a :class:`~dp_accounting.dp_event.NonPrivateDpEvent` (ε = ∞). Views whose
events differ per individual (``per_subject``) keep one event list per subject (a client id) and report the
worst subject.

ε(δ) of a view is the composition of its events: exact (dp-accounting's closed-form Gaussian privacy loss)
when all are unsampled Gaussians, else with dp-accounting's PLD accountant when it supports them
(Koskela et al. 2020; Doroshenko et al., "Connect the Dots", PETS 2022), else its RDP accountant (Mironov
2017; Wang, Balle, Kasiviswanathan, AISTATS 2019 for sampling without replacement).
:meth:`PrivacyLedger.to_dict` lists every event (as dp-accounting's own named-tuple fields) so that anyone can
recompute ε with dp-accounting alone; the run's headline ``privacy.epsilon`` is the worst view.

>>> from dp_accounting import dp_event as E
>>> led = PrivacyLedger(delta=1e-5)
>>> led.add_view("aggregate", "the released sums", relation="add_or_remove_one")
>>> for r in (1, 2): led.record("aggregate", E.GaussianDpEvent(2.0), round=r, what="noisy sum")
>>> round(led.epsilon("aggregate"), 2)
2.94
>>> led.worst()[0]
'aggregate'
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from simulator.dp.dpa import E, M, P, pld, privacy_accountant, rdp

__all__ = [
    "LedgerView",
    "PrivacyLedger",
    "compose_epsilon",
    "computation_relation",
    "event_from_dict",
    "event_to_dict",
    "gaussian",
    "gaussian_epsilon",
    "gaussian_multiplier",
    "sampled",
]

RELATIONS = ("add_or_remove_one", "replace_one")  # dp-accounting's NeighboringRelation, by lower-case name


def _relation(name: str) -> Any:
    """dp-accounting's ``NeighboringRelation`` called ``name`` (one of :data:`RELATIONS`)."""
    if name not in RELATIONS:
        raise KeyError(name)
    return getattr(privacy_accountant.NeighboringRelation, name.upper())


#: PLD discretisation: dp-accounting's default; a coarser one gives a larger (still valid) ε.
PLD_INTERVAL = 1e-4


def gaussian_multiplier(*parts: tuple[float, float]) -> float:
    """Noise multiplier of one Gaussian release made of several parts, each ``(noise std, L2 sensitivity)``.

    Releasing independent Gaussians together is one Gaussian mechanism whose multiplier is
    ``(Σ (Δ_i/σ_i)²)^(−1/2)``; a part with σ = 0 and Δ > 0 makes the release non-private (0).

    >>> round(gaussian_multiplier((1.0, 1.0)), 3)
    1.0
    >>> round(gaussian_multiplier((1.1547, 1.0), (1.0, 0.5)), 3)  # Andrew et al.: update + shifted bit
    1.0
    >>> gaussian_multiplier((0.0, 1.0))
    0.0
    """
    total = 0.0
    for std, sens in parts:
        if sens <= 0:
            continue
        if std <= 0:
            return 0.0
        total += (sens / std) ** 2
    return math.inf if total == 0 else 1.0 / math.sqrt(total)


def sampled(event: E.DpEvent, *, sampling: str, rate: float, num_clients: int, sample_size: int) -> E.DpEvent:
    """``event`` under the round's client sampling: Poisson (rate q), fixed-size without replacement, or none.

    A Gaussian without noise is a :class:`~dp_accounting.dp_event.NonPrivateDpEvent`, sampled or not."""
    if isinstance(event, E.NonPrivateDpEvent) or (
        isinstance(event, E.GaussianDpEvent) and event.noise_multiplier == 0
    ):
        return E.NonPrivateDpEvent()
    if sampling == "poisson":
        return E.PoissonSampledDpEvent(rate, event)
    if sampling == "fixed":
        return E.SampledWithoutReplacementDpEvent(num_clients, sample_size, event)
    return event


def gaussian(noise_multiplier: float) -> E.DpEvent:
    """``GaussianDpEvent(z)``, or a :class:`~dp_accounting.dp_event.NonPrivateDpEvent` when ``z = 0``."""
    return E.GaussianDpEvent(noise_multiplier) if noise_multiplier > 0 else E.NonPrivateDpEvent()


def event_to_dict(event: E.DpEvent) -> dict[str, Any]:
    """dp-accounting's named-tuple form of ``event`` as plain JSON (``class_name`` + the event's fields)."""

    def plain(v: Any) -> Any:
        if hasattr(v, "_asdict"):
            d = {k: plain(x) for k, x in v._asdict().items()}
            d.pop("module_name", None)
            return d
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(event.to_named_tuple())


def event_from_dict(d: dict[str, Any]) -> E.DpEvent:
    """Inverse of :func:`event_to_dict`."""
    cls = getattr(E, d["class_name"])
    kwargs = {}
    for k, v in d.items():
        if k == "class_name":
            continue
        if isinstance(v, dict) and "class_name" in v:
            v = event_from_dict(v)
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            v = [event_from_dict(x) for x in v]
        kwargs[k] = v
    return cls(**kwargs)


def _grouped(events: list[E.DpEvent]) -> tuple[tuple[E.DpEvent, int], ...]:
    out: list[list[Any]] = []
    for e in events:
        if out and out[-1][0] == e:
            out[-1][1] += 1
        else:
            out.append([e, 1])
    return tuple((e, k) for e, k in out)


def _composed(groups: tuple[tuple[E.DpEvent, int], ...]) -> E.DpEvent:
    return E.ComposedDpEvent([E.SelfComposedDpEvent(e, k) if k > 1 else e for e, k in groups])


def _accountant(name: str, relation: str) -> Any:
    rel = _relation(relation)
    if name == "pld":
        return pld.PLDAccountant(rel, value_discretization_interval=PLD_INTERVAL)
    return rdp.RdpAccountant(neighboring_relation=rel)


def _has_wor(event: E.DpEvent) -> bool:
    if isinstance(event, E.SampledWithoutReplacementDpEvent):
        return True
    if isinstance(event, E.ComposedDpEvent):
        return any(_has_wor(e) for e in event.events)
    inner = getattr(event, "event", None)
    return isinstance(inner, E.DpEvent) and _has_wor(inner)


def computation_relation(event: E.DpEvent, relation: str) -> str:
    """The relation to hand dp-accounting so that it reads every multiplier as std / neighbour distance.

    dp-accounting's RDP accountant reads a Gaussian's multiplier as std / distance under any relation, and
    ``SampledWithoutReplacementDpEvent`` needs REPLACE_ONE; its PLD accountant under REPLACE_ONE reads a
    Gaussian's multiplier against *half* the distance (its inputs are replaced within a ball). So a
    replace-one view whose events are plain Gaussians (multipliers already against the 2C distance) is
    composed under ADD_OR_REMOVE_ONE, where the PLD of a Gaussian depends on std / distance alone.
    """
    if relation == "replace_one" and not _has_wor(event):
        return "add_or_remove_one"
    return relation


def accountants_for(event: E.DpEvent, relation: str) -> list[str]:
    """The dp-accounting accountants that can analyse ``event`` under ``relation``, preferred first."""
    return [a for a in ("pld", "rdp") if _accountant(a, relation).supports(event)]


@functools.lru_cache(maxsize=256)
def _pld(event: E.DpEvent, relation: str) -> Any:
    """The PLD of ``event`` built the way dp-accounting's PLD accountant builds it, with the elementary
    mechanisms memoised (building one costs ~0.5 s; composing it again each round is cheap); None when the
    event is not one of the kinds the ledger records (the accountant then does it all)."""
    rel = _relation(relation)
    if isinstance(event, E.GaussianDpEvent) and event.noise_multiplier > 0:
        return P.from_gaussian_mechanism(
            event.noise_multiplier, value_discretization_interval=PLD_INTERVAL, neighboring_relation=rel
        )
    if (
        isinstance(event, E.PoissonSampledDpEvent)
        and isinstance(event.event, E.GaussianDpEvent)
        and event.event.noise_multiplier > 0
        and rel == privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE
    ):
        return P.from_gaussian_mechanism(
            event.event.noise_multiplier,
            sampling_prob=event.sampling_probability,
            value_discretization_interval=PLD_INTERVAL,
        )
    if isinstance(event, E.SelfComposedDpEvent):
        inner = event.event
        if isinstance(inner, E.GaussianDpEvent) and inner.noise_multiplier > 0:  # k Gaussians are one: z/√k
            return _pld(E.GaussianDpEvent(inner.noise_multiplier / math.sqrt(event.count)), relation)
        base = _pld(inner, relation)
        return None if base is None else base.self_compose(event.count)
    return None


@functools.lru_cache(maxsize=4096)
def _epsilon_cached(
    groups: tuple[tuple[E.DpEvent, int], ...], relation: str, delta: float, accountant: str
) -> float:
    eps: float | None = None
    if accountant == "pld":
        parts = [_pld(E.SelfComposedDpEvent(e, k) if k > 1 else e, relation) for e, k in groups]
        if all(p is not None for p in parts):
            total = parts[0]
            for p in parts[1:]:
                total = total.compose(p)
            eps = float(total.get_epsilon_for_delta(delta))
    if eps is None:
        acc = _accountant(accountant, relation)
        previous = logging.root.manager.disable
        logging.disable(
            logging.WARNING
        )  # RDP's "failed to converge ... excluding this order" lines: not actionable
        try:
            acc.compose(_composed(groups))
            eps = float(acc.get_epsilon(delta))
        finally:
            logging.disable(previous)
    return math.inf if math.isnan(eps) else eps


@functools.lru_cache(maxsize=4096)
def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """Exact ε(δ) of one Gaussian mechanism from dp-accounting's closed-form hockey-stick divergence (Balle &
    Wang, ICML 2018), inverted by bisection; a composition of Gaussians is one Gaussian with
    ``z = (Σ 1/z_i²)^(−1/2)``, so this is exact for any number of them (no discretisation).

    >>> round(gaussian_epsilon(1.0, 1e-5), 3)
    4.377
    """
    loss = M.GaussianPrivacyLoss(noise_multiplier, sensitivity=1.0)
    if float(loss.get_delta_for_epsilon(0.0)) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while float(loss.get_delta_for_epsilon(hi)) > delta:
        lo, hi = hi, hi * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(loss.get_delta_for_epsilon(mid)) > delta else (lo, mid)
        if hi - lo < 1e-10 * max(1.0, hi):
            break
    return hi


def compose_epsilon(
    events: list[E.DpEvent], *, relation: str, delta: float, accountant: str | None = None
) -> tuple[float, str]:
    """ε(δ) of the composition of ``events`` and the accountant used: ``gaussian`` (exact) when every event is
    an unsampled Gaussian, else dp-accounting's PLD when it can, else its RDP."""
    if not events:
        return 0.0, accountant or "pld"
    groups = _grouped(events)
    if any(isinstance(e, E.NonPrivateDpEvent) for e, _ in groups):
        return math.inf, accountant or "pld"
    if accountant in (None, "gaussian") and all(
        isinstance(e, E.GaussianDpEvent) and e.noise_multiplier > 0 for e, _ in groups
    ):
        z = 1.0 / math.sqrt(sum(k / e.noise_multiplier**2 for e, k in groups))
        return gaussian_epsilon(z, delta), "gaussian"
    rel = computation_relation(_composed(groups), relation)
    usable = accountants_for(_composed(groups), rel)
    if not usable:
        raise ValueError(f"no dp-accounting accountant supports these events under {relation}")
    name = accountant if accountant in usable else usable[0]
    return _epsilon_cached(groups, rel, delta, name), name


@dataclass
class _Entry:
    round: int
    what: str
    event: E.DpEvent


@dataclass
class LedgerView:
    """One server view: its neighbouring relation and the releases it sees."""

    name: str
    description: str
    relation: str
    per_subject: bool = False
    entries: list[_Entry] = field(default_factory=list)
    subjects: dict[Hashable, list[_Entry]] = field(default_factory=dict)

    def sequences(self) -> dict[Hashable, list[_Entry]]:
        return self.subjects if self.per_subject else {"all": self.entries}


class PrivacyLedger:
    """Append-only record of a run's releases; ε per view from dp-accounting (see the module docstring)."""

    def __init__(self, *, delta: float) -> None:
        self.delta = float(delta)
        self.views: dict[str, LedgerView] = {}
        self.notes: list[str] = []

    def add_view(self, name: str, description: str, *, relation: str, per_subject: bool = False) -> None:
        if relation not in RELATIONS:
            raise ValueError(f"relation {relation!r}; allowed: {sorted(RELATIONS)}")
        self.views[name] = LedgerView(name, description, relation, per_subject)

    def record(
        self, view: str, event: E.DpEvent, *, round: int, what: str, subject: Hashable | None = None
    ) -> None:
        """Append one release to ``view`` (to ``subject``'s list when the view is per subject)."""
        v = self.views[view]
        entry = _Entry(int(round), what, event)
        if v.per_subject:
            if subject is None:
                raise ValueError(f"view {view!r} is per subject: name the subject")
            v.subjects.setdefault(subject, []).append(entry)
        else:
            v.entries.append(entry)

    # ---- ε ----
    def _worst_sequence(
        self, v: LedgerView, extra: Sequence[E.DpEvent] = ()
    ) -> tuple[float, str, Hashable | None]:
        seqs: dict[Hashable | None, list[_Entry]] = dict(v.sequences()) or {None: []}
        cache: dict[tuple[Any, ...], tuple[float, str]] = {}
        best: tuple[float, str, Hashable | None] | None = None
        for subject, entries in seqs.items():
            events = [e.event for e in entries] + list(extra)
            key = tuple(events)
            if key not in cache:
                cache[key] = compose_epsilon(events, relation=v.relation, delta=self.delta)
            eps, acc = cache[key]
            if best is None or eps > best[0]:
                best = (eps, acc, subject)
        assert best is not None
        return best

    def epsilon(self, view: str, *, extra: Sequence[E.DpEvent] = ()) -> float:
        """ε(δ) of ``view`` (its worst subject), optionally with ``extra`` hypothetical events appended."""
        return self._worst_sequence(self.views[view], list(extra))[0]

    def epsilons(self) -> dict[str, float]:
        return {name: self.epsilon(name) for name in self.views}

    def worst(self) -> tuple[str, float]:
        """The view with the largest ε and that ε (``("none", 0.0)`` for an empty ledger)."""
        eps = self.epsilons()
        if not eps:
            return "none", 0.0
        name = max(eps, key=lambda k: eps[k])
        return name, eps[name]

    # ---- summary.json ----
    def to_dict(self) -> dict[str, Any]:
        """``privacy.ledger``: per view, its relation, accountant, ε and the worst subject's
        events, grouped."""
        views: dict[str, Any] = {}
        for name, v in self.views.items():
            eps, acc, subject = self._worst_sequence(v)
            entries = v.sequences().get(subject, []) if subject is not None else []
            groups: list[dict[str, Any]] = []
            for e in entries:
                if groups and groups[-1]["_event"] == e.event and groups[-1]["what"] == e.what:
                    groups[-1]["count"] += 1
                    groups[-1]["rounds"][1] = e.round
                else:
                    groups.append(
                        {"rounds": [e.round, e.round], "count": 1, "what": e.what, "_event": e.event}
                    )
            for g in groups:
                g["event"] = event_to_dict(g.pop("_event"))
            all_events = _composed(_grouped([e.event for e in entries])) if entries else E.NoOpDpEvent()
            block: dict[str, Any] = {
                "description": v.description,
                "neighboring_relation": v.relation,
                "accountant": acc,
                "dp_accounting_relation": computation_relation(all_events, v.relation),
                "epsilon": eps,
                "events": groups,
            }
            other = [a for a in ("pld", "rdp") if a != acc][:1]
            if entries and other and not math.isinf(eps):
                evs = [e.event for e in entries]
                rel = computation_relation(_composed(_grouped(evs)), v.relation)
                if other[0] in accountants_for(_composed(_grouped(evs)), rel):
                    block[f"epsilon_{other[0]}"] = compose_epsilon(
                        evs, relation=v.relation, delta=self.delta, accountant=other[0]
                    )[0]
            if v.per_subject:
                block.update(subjects=len(v.subjects), worst_subject=subject)
            views[name] = block
        worst, eps = self.worst()
        return {
            "delta": self.delta,
            "worst_view": worst,
            "epsilon": eps,
            "views": views,
            "notes": list(self.notes),
        }
