"""Load-time checks of ``attacks.inversion`` and ``kind`` (registered in the loader's ``SCENARIO_CHECKS``)."""

from __future__ import annotations

from simulator.scenario.loader import Problem
from simulator.scenario.schema import Scenario

__all__ = ["inversion_problems"]


def inversion_problems(s: Scenario) -> list[Problem]:
    inv, out = s.attacks.inversion, []
    if s.kind == "leakage":
        if inv is None:
            out.append(Problem("attacks.inversion", "kind = \"leakage\" needs an inversion attack "
                                                    "([attacks.inversion] with a name, e.g. \"inverting_gradients\")"))
        return out
    if s.leakage is not None:
        out.append(Problem("leakage", f"the [leakage] section is for kind = \"leakage\" (this scenario is "
                                      f"kind = {s.kind!r})"))
    if inv is None:
        return out
    n, rounds = s.data.num_clients, s.federation.rounds
    bad_t = [t for t in inv.targets if not 0 <= t < n]
    if bad_t:
        out.append(Problem("attacks.inversion.targets", f"{bad_t} are not partition ids; allowed: 0..{n - 1}"))
    bad_r = [r for r in inv.rounds if not 1 <= r <= rounds]
    if bad_r:
        out.append(Problem("attacks.inversion.rounds", f"{bad_r} outside the run; allowed: 1..{rounds}"))
    if s.compression.name == "fetchsgd":
        out.append(Problem("attacks.inversion", "FetchSGD merges the sketches in sketch space with server state; "
                                                "there is no per-client update to attack (use a sketched FedAvg "
                                                "compressor: gaussian_sketch, srht, count_sketch)"))
    return out
