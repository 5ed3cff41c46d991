"""Load-time checks of ``[secure_aggregation]`` (registered with :func:`~simulator.scenario.scenario_check`).

Behind secure aggregation the server holds the cohort's sum alone, so everything that reads one client's
update on the server is refused, with what works instead: FedAvg (a function of the sum), norm bounds and DP
noise added by the clients, DP noise the server adds to the sum, server defenses on the aggregate.
"""

from __future__ import annotations

from simulator.registry import all_registries
from simulator.scenario.loader import Problem, scenario_check
from simulator.scenario.schema import Scenario

__all__ = ["secure_aggregation_problems"]

_WORKS = (
    "behind secure aggregation use defenses.aggregator.name = 'fedavg', client-side clipping or noise "
    "([[defenses.client]], [privacy] level = 'client'), or server defenses on the aggregate"
)


@scenario_check
def secure_aggregation_problems(s: Scenario) -> list[Problem]:
    sa = s.secure_aggregation
    if sa is None:
        return []
    if s.kind == "leakage":
        return [
            Problem(
                "secure_aggregation",
                "a leakage experiment has one payload; set [leakage] clients = K and "
                "secure_aggregation = true to attack a secure sum of K clients",
            )
        ]
    out: list[Problem] = []
    agg = s.defenses.aggregator.name
    regs = all_registries()
    if agg in regs["aggregator"] and getattr(
        regs["aggregator"].get(agg).factory, "needs_individual_updates", True
    ):
        out.append(
            Problem(
                "defenses.aggregator.name",
                f"{agg!r} reads each client's update, but secure aggregation reveals only their sum; "
                f"{_WORKS}",
            )
        )
    if s.attacks.inversion is not None:
        out.append(
            Problem(
                "attacks.inversion",
                "the in-run inversion attack reads one client's update, which secure aggregation hides; "
                "study attacks on the aggregate with a leakage experiment ([leakage] clients = K, "
                "secure_aggregation = true)",
            )
        )
    if s.audit is not None and s.audit.level == "client":
        out.append(
            Problem(
                "audit.level",
                "'client': the canary clients join the per-client update matrix, which secure aggregation "
                "hides; use level = 'record'",
            )
        )
    if s.compression.name != "none":
        out.append(
            Problem(
                "compression.name",
                f"{s.compression.name!r}: secure aggregation here sums dense updates; remove [compression] "
                "or the [secure_aggregation] section",
            )
        )
    if s.federation.clients_per_round is not None and s.federation.clients_per_round < 2:
        out.append(
            Problem(
                "federation.clients_per_round",
                f"{s.federation.clients_per_round}: secure aggregation needs at least 2 clients per round",
            )
        )
    if sa.mode == "secaggplus" and s.simulation.engine != "inline":
        out.append(
            Problem(
                "secure_aggregation.mode",
                "'secaggplus' runs Flower's secure aggregation protocol in-process "
                "(simulation.engine = 'inline'); use mode = 'simulated' on the "
                f"{s.simulation.engine!r} engine",
            )
        )
    return out
