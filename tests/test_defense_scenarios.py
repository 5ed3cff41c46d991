"""scenarios/defense_<name>.toml: one per robust aggregator, each the edge-case PGD scenario with only the
aggregator changed, and each runs (tiny: 2 rounds, small MLP, 1,000 digits)."""

from __future__ import annotations

from pathlib import Path

import pytest

from defenses import AGGREGATORS
from simulator import load_scenario
from simulator.runner import run

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
DEFENSES = sorted(p.stem.removeprefix("defense_") for p in SCENARIOS.glob("defense_*.toml"))
TINY = ["simulation.engine='inline'", "data.max_examples=1000", "data.num_clients=6", "federation.clients_per_round=4",
        "federation.rounds=2", "federation.local_epochs=1", "model.name='mlp'", "model.params={hidden=[32]}",
        "attacks.backdoor.params.base.params.edge_size=10"]


def test_there_is_one_defense_scenario_per_robust_aggregator() -> None:
    assert DEFENSES == sorted(set(AGGREGATORS.names()) - {"fedavg"})


@pytest.mark.parametrize("name", DEFENSES)
def test_defense_scenario_is_edge_case_pgd_with_only_the_aggregator_changed(name: str) -> None:
    s = load_scenario(SCENARIOS / f"defense_{name}.toml")
    ref = load_scenario(SCENARIOS / "backdoor_edge_pgd.toml")
    assert s.defenses.aggregator.name == name
    a, b = s.resolved(), ref.resolved()
    for d in (a, b):
        for key in ("name", "description", "defenses"):
            d.pop(key)
    assert a == b


@pytest.mark.parametrize("name", DEFENSES)
def test_defense_scenario_runs(name: str) -> None:
    r = run(load_scenario(SCENARIOS / f"defense_{name}.toml", TINY), write=False)
    assert r.status == "completed" and len(r.rounds) == 2
    assert r.rounds[1].malicious  # the attacker acts in round 2 and is recorded
    assert r.rounds[1].clients_aggregated >= 1 and r.rounds[-1].main_accuracy is not None
    assert "backdoor_accuracy" in r.rounds[-1].metrics
    assert r.extra["defense"]["aggregator"] == name
