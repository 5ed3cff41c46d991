"""Defense-aware (adaptive) backdoors: a base backdoor whose updates the acting attackers reshape, knowing the
round's benign updates, so that they pass the acceptance test of a named aggregation rule.

An adaptive attacker in the sense of the robust-aggregation literature (Fang et al., USENIX Security 2020, and
Shejwalkar & Houmansadr, NDSS 2021, for untargeted poisoning; the defenses' own adaptive-attack sections for
backdoors): the attackers know the defense, its parameters and the round's benign updates, and keep as much of
their backdoor update as the rule lets through. Two levers, per rule:

* **mix**: each attacker sends ``μ + λ·(Δ_i − μ)`` (``μ`` the benign mean, ``Δ_i`` its own backdoor update)
  with the largest ``λ ∈ [0, 1]`` (binary search) for which the rule accepts the attackers' rows; when the
  rule rejects even ``μ`` (Multi-metrics' uncentred Mahalanobis score does not always rank the mean first),
  the anchor is a benign update instead (up to ``max_anchors`` of them, nearest the mean first; the largest
  passing mix wins);
* **norm**: the update is scaled down to a norm the rule does not clip.

=====================  ===================================================================================
rule (``adapt_to``)    what the attackers do
=====================  ===================================================================================
``norm_clipping``      project each update onto the clipping ball ‖Δ‖ ≤ M (M read off the rule's score
                       ``‖Δ‖ / M``): the direction is kept whole (Sun et al., 2019: the PGD bound)
``flame``              clip the norm to the benign median norm (FLAME's clipping bound: nothing is
                       clipped), then the largest mix whose cosine to ``μ`` is ≥ the smallest benign
                       cosine to ``μ`` and that FLAME's HDBSCAN puts in the majority cluster
``krum``               the largest mix for which Krum selects an attacker
``multi_krum``,        the largest mix for which the rule keeps every attacker (Multi-metrics: the three
``multi_metrics``,     distance sums, whitened, rank among the kept fraction -- the rule's own acceptance
any other rule         threshold)
=====================  ===================================================================================

Acceptance is decided by running the rule itself (a probe the round core builds, on a copy of the rule: the
attackers simulate the server exactly). When even ``λ = 0`` (the benign mean) fails, the attackers send their
norm-shaped updates unmixed (``passes = False``).

How it runs: the attackers train the base backdoor in the normal client step; the round core replaces their
rows after decoding (a simulation device, as for ``[attacks.poisoning]``; see
:class:`attacks.base.DefenseAware` and :class:`simulator.round.Adapter`). In a scenario::

    [attacks.backdoor]
    name = "adaptive"
    [attacks.backdoor.params]
    adapt_to = "multi_krum"   # or { name = "krum", params = { num_malicious = 2 } }
    base = { name = "pgd", params = { base = "edge_case" } }

Leave ``adapt_to`` unset to adapt to the server's own aggregator (its params and its state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from attacks.backdoor import badnets as _badnets  # noqa: F401  (registers the default base)
from attacks.backdoor.compose import BaseSpec, ComposedAttack
from attacks.base import CLIENT_ATTACKS, Adaptation, DefenseAware, Probe, Verdict
from simulator.registry import BadParams, UnknownName, all_registries
from simulator.scenario.loader import Problem, scenario_check
from simulator.scenario.schema import Scenario
from simulator.sketching.checks import scenario_compressor

__all__ = [
    "AdaptiveBackdoor",
    "AggregatorSpec",
    "adapt_updates",
    "adaptive_problems",
    "clip_rows",
    "largest_passing_mix",
    "mix_rows",
]

#: the default base (a frozen spec, so one shared instance is a safe default)
_BADNETS = BaseSpec(name="badnets")
#: rules that keep a single update: passing means *an* attacker is selected
_SINGLE_SELECTION = frozenset({"krum"})


class AggregatorSpec(BaseModel):
    """The aggregation rule the attackers adapt to: a registered aggregator name and its params (a bare string
    is the name). Checked against the registry when the scenario is loaded. ``params`` unset: the server's
    own params when it runs that rule (attackers who know the defense), the rule's defaults otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    params: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _known(self) -> AggregatorSpec:
        try:
            all_registries()["aggregator"].validate(self.name, self.params or {})
        except UnknownName as err:  # a KeyError: re-raise as ValueError so pydantic reports it
            raise ValueError(str(err)) from None
        except BadParams as err:
            raise ValueError(str(err)) from None
        return self


def mix_rows(own: torch.Tensor, anchor: torch.Tensor, lam: float) -> torch.Tensor:
    """``anchor + λ·(own_i − anchor)`` for every row (``own`` itself at ``λ = 1``).

    >>> mix_rows(torch.tensor([[2.0, 0.0]]), torch.tensor([0.0, 2.0]), 0.25).tolist()
    [[0.5, 1.5]]
    """
    return own if lam == 1.0 else anchor + lam * (own - anchor)


def clip_rows(rows: torch.Tensor, bound: float) -> torch.Tensor:
    """Each row scaled by ``min(1, bound / ‖row‖)``.

    >>> clip_rows(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 1.0).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.30000001192092896, 0.4000000059604645]]
    """
    norms = torch.linalg.vector_norm(rows.to(torch.float64), dim=1)
    f = torch.where(norms > bound, bound / norms.clamp_min(1e-300), torch.ones_like(norms))
    return rows * f[:, None].to(rows.dtype)


def largest_passing_mix(
    candidate: Callable[[float], torch.Tensor], passes: Callable[[torch.Tensor], bool], *, steps: int
) -> tuple[float, torch.Tensor] | None:
    """The largest ``λ ∈ [0, 1]`` (to ``2^-steps``) whose ``candidate(λ)`` passes, by binary search between a
    passing ``lo`` and a failing ``hi``; None when ``λ = 0`` fails too. Assumes passing is monotone in ``λ``
    (the rows move away from the benign mean as ``λ`` grows).

    >>> lam, _ = largest_passing_mix(lambda x: torch.tensor([x]), lambda r: float(r) <= 0.3, steps=10)
    >>> round(lam, 3)
    0.3
    """
    top = candidate(1.0)
    if passes(top):
        return 1.0, top
    bottom = candidate(0.0)
    if not passes(bottom):
        return None
    lo, hi, best = 0.0, 1.0, bottom
    for _ in range(steps):
        mid = (lo + hi) / 2
        rows = candidate(mid)
        if passes(rows):
            lo, best = mid, rows
        else:
            hi = mid
    return lo, best


def _cosines(rows: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    r, v = rows.to(torch.float64), ref.to(torch.float64)
    den = torch.linalg.vector_norm(r, dim=1) * torch.linalg.vector_norm(v)
    return torch.where(den > 0, (r @ v) / den.clamp_min(1e-300), torch.zeros_like(den))


def adapt_updates(
    benign: torch.Tensor, own: torch.Tensor, *, rule: str, probe: Probe, steps: int = 12, max_anchors: int = 8
) -> Adaptation:
    """The rows that pass ``rule`` keeping the most of ``own`` (see the module docstring's table).

    ``benign`` ``(n_b, d)``, ``n_b ≥ 1``: the round's benign updates; ``own`` ``(f, d)``: the attackers'
    backdoor updates; ``probe`` runs the rule with the attackers' rows replaced."""
    if benign.shape[0] < 1:
        raise ValueError("adapting to a rule needs at least one benign update")
    mu = benign.mean(dim=0)

    def accepted(v: Verdict) -> bool:
        return any(v.accepted) if rule in _SINGLE_SELECTION else all(v.accepted)

    if rule == "norm_clipping":  # the rule's score is ‖Δ‖ / M: read the bound M off it
        v = probe(own)
        norms = torch.linalg.vector_norm(own.to(torch.float64), dim=1).tolist()
        bounds = [nrm / s for nrm, s in zip(norms, v.scores) if s > 1.0]
        if not bounds:
            return Adaptation(own, 1.0, True)
        bound = min(bounds) * (1.0 - 1e-6)  # strictly inside: float rounding must not clip
        rows = clip_rows(own, bound)
        return Adaptation(rows, 1.0, all(s <= 1.0 for s in probe(rows).scores))
    if rule == "flame":  # FLAME clips to the median norm and keeps the majority cosine cluster
        bound = float(torch.quantile(torch.linalg.vector_norm(benign.to(torch.float64), dim=1), 0.5))
        c_min = float(_cosines(benign, mu).min()) - 1e-9

        def shape(rows: torch.Tensor) -> torch.Tensor:
            return clip_rows(rows, bound)

        def extra(rows: torch.Tensor) -> bool:
            return bool((_cosines(rows, mu) >= c_min).all())

    else:

        def shape(rows: torch.Tensor) -> torch.Tensor:
            return rows

        def extra(rows: torch.Tensor) -> bool:
            return True

    def passes(rows: torch.Tensor) -> bool:
        return extra(rows) and accepted(probe(rows))

    def towards(anchor: torch.Tensor) -> Callable[[float], torch.Tensor]:
        return lambda lam: shape(mix_rows(own, anchor, lam))

    found = largest_passing_mix(towards(mu), passes, steps=steps)
    if found is None:
        # the benign mean itself fails (Multi-metrics' uncentred Mahalanobis score need not rank the mean
        # first): anchor on benign updates instead, nearest the mean first, keeping the largest passing mix
        order = torch.argsort(torch.linalg.vector_norm((benign - mu).to(torch.float64), dim=1)).tolist()
        for k in order[:max_anchors]:
            got = largest_passing_mix(towards(benign[k]), passes, steps=steps)
            if got is not None and (found is None or got[0] > found[0]):
                found = got
    if found is None:
        return Adaptation(shape(own), 1.0, False)
    lam, rows = found
    return Adaptation(rows, lam, True)


@CLIENT_ATTACKS.register("adaptive")
class AdaptiveBackdoor(ComposedAttack, DefenseAware):
    """A defense-aware backdoor: the ``base`` backdoor, whose acting attackers, knowing the round's benign
    updates, reshape their updates to pass the ``adapt_to`` rule (largest mix toward the benign mean, norm
    within the rule's bound; see :mod:`attacks.backdoor.adaptive`).

    Parameters
    ----------
    base
        The backdoor to wrap (default ``"badnets"``; any client attack, e.g. ``pgd`` over ``edge_case``).
    adapt_to
        The rule the attackers adapt to: an aggregator name or ``{name, params}``; unset: the server's own
        aggregator (its params and its state), i.e. attackers who know the defense. A bare name that is the
        server's rule also means the server's own instance; give ``params`` to simulate other ones.
    search_steps
        Binary-search steps on the mix (precision ``2^-search_steps``).

    Notes
    -----
    The attackers are omniscient (every benign update of the round) and simulate the rule exactly; the round
    core runs the adaptation on the server side after decoding (it needs per-client updates: refused with
    secure aggregation or a compressor that aggregates in sketch space).

    Against ``norm_clipping`` the projection sends exactly what the server's clip would make of the update:
    the aggregate (and the backdoor accuracy) is unchanged; only the clip's trace (score > 1) disappears. The
    lever against a norm bound is to train inside it: use ``pgd`` with ``adaptive_clip_bound = M`` as the
    base.
    """

    def __init__(
        self,
        base: BaseSpec = _BADNETS,
        adapt_to: AggregatorSpec | None = None,
        search_steps: Annotated[int, Field(ge=1, le=40)] = 12,
    ) -> None:
        super().__init__(base)
        if adapt_to is not None and not isinstance(adapt_to, AggregatorSpec):  # a name, from Python
            adapt_to = AggregatorSpec.model_validate(adapt_to)
        self.adapt_to, self.search_steps = adapt_to, search_steps

    @property
    def target_aggregator(self) -> tuple[str, dict[str, Any] | None] | None:
        if self.adapt_to is None:
            return None
        params = self.adapt_to.params
        return self.adapt_to.name, None if params is None else dict(params)

    def adapt(self, benign: torch.Tensor, own: torch.Tensor, *, rule: str, probe: Probe) -> Adaptation:
        return adapt_updates(benign, own, rule=rule, probe=probe, steps=self.search_steps)


@scenario_check
def adaptive_problems(s: Scenario) -> list[Problem]:
    """A defense-aware backdoor reshapes the per-client updates on the server side: refused where they never
    exist (secure aggregation, a compressor that aggregates in sketch space)."""
    spec = s.attacks.backdoor
    if spec is None or "adaptive" not in _named(spec.name, spec.params):
        return []
    try:
        attack = CLIENT_ATTACKS.create(spec.name, spec.params)
    except (ValueError, TypeError, KeyError):
        return []  # reported by the generic plug-in check
    adaptive = next((a for a in _chain(attack) if isinstance(a, AdaptiveBackdoor)), None)
    if adaptive is None:
        return []
    out: list[Problem] = []
    if s.secure_aggregation is not None:
        out.append(
            Problem(
                "secure_aggregation",
                "secure aggregation hides the per-client updates the adaptive backdoor reshapes; turn it off "
                "or use a backdoor without adapt_to",
            )
        )
    comp = scenario_compressor(s)  # None: reported by the compression checks
    if comp is not None and comp.aggregates_in_sketch_space:
        out.append(
            Problem(
                "compression.name",
                f"{s.compression.name!r} aggregates in sketch space: the server never holds the per-client "
                "updates the adaptive backdoor reshapes; use a compressor that decodes each client",
            )
        )
    target = adaptive.target_aggregator
    aggregators = all_registries()["aggregator"]
    if target is not None and target[0] != s.defenses.aggregator.name:
        factory = aggregators.get(target[0]).factory
        if getattr(factory, "needs_root_update", False):
            out.append(
                Problem(
                    "attacks.backdoor.params.adapt_to",
                    f"{target[0]!r} needs the server's root update, which only a server running it computes "
                    f"(the scenario's aggregator is {s.defenses.aggregator.name!r})",
                )
            )
    return out


def _named(name: str, params: Any) -> set[str]:
    """Every plug-in name in a client-attack spec: the name and, recursively, its ``base`` specs."""
    out = {name}
    base = params.get("base") if isinstance(params, dict) else None
    if isinstance(base, str):
        out.add(base)
    elif isinstance(base, dict) and isinstance(base.get("name"), str):
        out |= _named(base["name"], base.get("params", {}))
    return out


def _chain(attack: Any) -> list[Any]:
    out = []
    for _ in range(64):
        if attack is None:
            break
        out.append(attack)
        attack = getattr(attack, "base", None)
    return out
