"""Load-time checks of ``attacks.inversion`` and ``kind`` (registered in the loader's ``SCENARIO_CHECKS`` by
:mod:`attacks.inversion`; they read the attacks' declared capabilities, so they live with the plug-ins)."""

from __future__ import annotations

from attacks.base import INVERSION_ATTACKS
from simulator.scenario.loader import Problem, scenario_check
from simulator.scenario.schema import Scenario
from simulator.sketching.checks import scenario_compressor

__all__ = ["aggregate_problems", "inversion_problems"]


def _flag(name: str, attr: str) -> bool:
    if name not in INVERSION_ATTACKS:
        return False  # the registry check reports unknown names
    return bool(getattr(INVERSION_ATTACKS.get(name).factory, attr, False))


@scenario_check
def inversion_problems(s: Scenario) -> list[Problem]:
    inv, out = s.attacks.inversion, []
    if s.kind == "leakage":
        if inv is None:
            out.append(
                Problem(
                    "attacks.inversion",
                    'kind = "leakage" needs an inversion attack '
                    '([attacks.inversion] with a name, e.g. "inverting_gradients")',
                )
            )
            return out
        server = s.leakage.server if s.leakage else "honest"
        if _flag(inv.name, "malicious_server") and server != "malicious":
            out.append(
                Problem(
                    "leakage.server",
                    f"{inv.name!r} modifies the model the server sends; it needs "
                    f'server = "malicious" (got {server!r})',
                )
            )
        comp = scenario_compressor(s)
        if comp is not None and (
            not getattr(comp, "decodes_alone", False) or getattr(comp, "aggregates_in_sketch_space", False)
        ):
            out.append(
                Problem(
                    "compression.name",
                    f"{s.compression.name!r} has no per-client payload to attack in "
                    "a leakage experiment (it must decode one client's payload alone); "
                    "use none or a per-client sketch (gaussian_sketch, srht, "
                    "count_sketch)",
                )
            )
        if _flag(inv.name, "wants_sketch") and not getattr(comp, "is_sketch", False):
            out.append(
                Problem(
                    "attacks.inversion",
                    f"{inv.name!r} matches in sketch space; it needs a sketch "
                    "[compression] (gaussian_sketch, srht, count_sketch)",
                )
            )
        return out
    if s.leakage is not None:
        out.append(
            Problem(
                "leakage",
                f'the [leakage] section is for kind = "leakage" (this scenario is kind = {s.kind!r})',
            )
        )
    if inv is None:
        return out
    n, rounds = s.data.num_clients, s.federation.rounds
    bad_t = [t for t in inv.targets if not 0 <= t < n]
    if bad_t:
        out.append(
            Problem("attacks.inversion.targets", f"{bad_t} are not partition ids; allowed: 0..{n - 1}")
        )
    bad_r = [r for r in inv.rounds if not 1 <= r <= rounds]
    if bad_r:
        out.append(Problem("attacks.inversion.rounds", f"{bad_r} outside the run; allowed: 1..{rounds}"))
    if _flag(inv.name, "malicious_server"):
        out.append(
            Problem(
                "attacks.inversion",
                f"{inv.name!r} needs a malicious server that sends its victim a "
                "modified model; in a federated run every client gets the same global "
                'model, so run it as kind = "leakage" with [leakage] server = '
                '"malicious"',
            )
        )
    comp = scenario_compressor(s)
    if comp is not None and getattr(comp, "aggregates_in_sketch_space", False):
        out.append(
            Problem(
                "attacks.inversion",
                f"{s.compression.name!r} merges the payloads in sketch space before "
                "decoding; there is no per-client update to attack (use a compressor "
                "that decodes each client: srht, gaussian_sketch, count_sketch with "
                "aggregate_in_sketch_space = false)",
            )
        )
    return out


@scenario_check
def aggregate_problems(s: Scenario) -> list[Problem]:
    """What a leakage aggregate (``[leakage] clients > 1``) cannot run: compression other than none, and an
    inversion attack that does not declare ``works_on_aggregate``."""
    cfg = s.leakage
    if cfg is None or cfg.clients == 1:
        return []
    out: list[Problem] = []
    k = cfg.clients
    if s.compression.name != "none":
        out.append(
            Problem(
                "leakage.clients",
                f"clients = {k}: an aggregate of several clients supports "
                f"compression none only (got {s.compression.name!r})",
            )
        )
    inv = s.attacks.inversion
    if (
        inv is not None
        and inv.name in INVERSION_ATTACKS
        and not getattr(INVERSION_ATTACKS.get(inv.name).factory, "works_on_aggregate", False)
    ):
        able = sorted(
            e.name for e in INVERSION_ATTACKS.entries() if getattr(e.factory, "works_on_aggregate", False)
        )
        out.append(
            Problem(
                "leakage.clients",
                f"clients = {k}: the server sees only the aggregate of the "
                f"clients' payloads, and {inv.name!r} does not declare that it "
                f"works on one (works_on_aggregate); attacks that do: "
                f"{', '.join(able)}",
            )
        )
    return out
