"""Load-time checks of ``[attacks.poisoning]`` (registered in the loader's ``SCENARIO_CHECKS`` by
:mod:`attacks.poisoning`).

An update-crafting attack replaces rows of the round's per-client update matrix (see
:mod:`attacks.poisoning.plugins`), so it is refused where that matrix never exists on the server (a compressor
that aggregates in sketch space, secure aggregation), where there is no attacker to act, and together with a
client attack (one attack at a time). The plug-in name and params are validated here too (the loader's generic
plug-in check does not list ``attacks.poisoning``).
"""

from __future__ import annotations

from typing import Any

from attacks.base import POISONING_ATTACKS
from simulator.registry import BadParams, UnknownName, all_registries, did_you_mean
from simulator.scenario.loader import Problem, scenario_check
from simulator.scenario.schema import Scenario
from simulator.sketching.checks import scenario_compressor

__all__ = ["poisoning_problems"]


def _attack_problems(name: str, params: dict[str, Any]) -> list[Problem]:
    try:
        attack = POISONING_ATTACKS.create(name, params)
    except UnknownName as e:
        hint = did_you_mean(name, e.known)
        return [
            Problem(
                "attacks.poisoning.name",
                f"unknown poisoning attack {name!r}{hint}; allowed: {', '.join(e.known)}",
            )
        ]
    except BadParams as e:
        return [Problem(f"attacks.poisoning.params.{field}", msg) for field, msg in e.problems]
    except (ValueError, TypeError) as e:
        return [Problem("attacks.poisoning.params", f"{name!r}: {e}")]
    target = attack.target_aggregator
    if target is None:
        return []
    aggregators = all_registries()["aggregator"]
    try:
        aggregators.create(*target)
    except UnknownName as e:
        return [
            Problem(
                "attacks.poisoning.params.aggregator",
                f"unknown aggregator {target[0]!r}{did_you_mean(target[0], e.known)}; "
                f"allowed: {', '.join(e.known)}",
            )
        ]
    except BadParams as e:
        return [
            Problem(f"attacks.poisoning.params.aggregator_params.{field}", msg) for field, msg in e.problems
        ]
    except (ValueError, TypeError) as e:
        return [Problem("attacks.poisoning.params.aggregator_params", f"{target[0]!r}: {e}")]
    return []


def _no_attackers(s: Scenario) -> bool:
    plan = s.attacks.plan
    if plan.malicious is None and plan.malicious_fraction is None and plan.malicious_ids is None:
        return True
    if plan.malicious_ids is not None:
        return not plan.malicious_ids
    if plan.malicious is not None:
        return plan.malicious == 0
    return round((plan.malicious_fraction or 0.0) * s.data.num_clients) == 0


def _secure_aggregation(s: object) -> bool:
    """Whether the scenario turns secure aggregation on (a ``secure_aggregation`` section, if the schema has
    one: a bool, or a table whose ``enabled`` is not false)."""
    sa = getattr(s, "secure_aggregation", None)
    if sa is None or sa is False:
        return False
    return bool(getattr(sa, "enabled", True))


@scenario_check
def poisoning_problems(s: Scenario) -> list[Problem]:
    spec = s.attacks.poisoning
    if spec is None:
        return []
    out = _attack_problems(spec.name, spec.params)
    if s.kind == "leakage":
        out.append(
            Problem(
                "attacks.poisoning",
                "a leakage experiment runs no federated rounds, so there are no updates to "
                'poison; use kind = "federated" or remove [attacks.poisoning]',
            )
        )
        return out
    if s.attacks.backdoor is not None:
        out.append(
            Problem(
                "attacks.poisoning",
                f"one client attack at a time: [attacks.backdoor] "
                f"({s.attacks.backdoor.name!r}) and [attacks.poisoning] "
                f"({spec.name!r}) are both set; remove one of them",
            )
        )
    if _no_attackers(s):
        out.append(
            Problem(
                "attacks.plan",
                f"[attacks.poisoning] ({spec.name!r}) needs attackers: set "
                "malicious (a count), malicious_fraction or malicious_ids in "
                "[attacks.plan] to at least one client",
            )
        )
    comp = scenario_compressor(s)  # None: reported by the compression checks
    if comp is not None and comp.aggregates_in_sketch_space:
        out.append(
            Problem(
                "compression.name",
                f"{s.compression.name!r} aggregates in sketch space: the server never holds "
                f"the per-client updates [attacks.poisoning] ({spec.name!r}) replaces; use "
                'compression "none" or a compressor that decodes each client (e.g. srht with '
                "aggregate_in_sketch_space = false)",
            )
        )
    if _secure_aggregation(s):
        out.append(
            Problem(
                "secure_aggregation",
                f"secure aggregation hides the per-client updates [attacks.poisoning] "
                f"({spec.name!r}) replaces; turn it off or remove [attacks.poisoning]",
            )
        )
    return out
