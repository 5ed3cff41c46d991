"""scenarios/defense_<name>.toml: one per robust aggregator of the backdoor table, each the α = 0.5 edge-case
PGD cell of backdoor_defense_grid.toml (so running it reproduces that row of the table), and each runs (tiny:
2 rounds, small MLP, 1,000 digits, a 1-round warm start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from defenses import AGGREGATORS
from simulator import load_scenario
from simulator.leaderboard.grid import load_grid
from simulator.runner import run

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
DEFENSES = sorted(p.stem.removeprefix("defense_") for p in SCENARIOS.glob("defense_*.toml"))
TINY = [
    "simulation.engine='inline'",
    "data.max_examples=1000",
    "data.num_clients=6",
    "federation.clients_per_round=4",
    "federation.rounds=2",
    "federation.local_epochs=1",
    "model.name='mlp'",
    "model.params={hidden=[32]}",
    "attacks.backdoor.params.base.params.edge_size=10",
    "model.warm_start={rounds=1}",
]


def test_each_defense_scenario_names_a_registered_aggregator() -> None:
    """Files name real rules; a new aggregator is not forced into a scenario file (its own test covers it)."""
    assert DEFENSES and set(DEFENSES) <= set(AGGREGATORS.names()) - {"fedavg"}


@pytest.fixture(scope="module")
def grid_cells() -> dict[str, dict]:
    g = load_grid(SCENARIOS / "backdoor_defense_grid.toml")
    return {
        c.labels["defense"]: c.scenario.resolved()
        for c in g.cells
        if c.labels["attack"] == "pgd" and c.labels["alpha"] == "0.5"
    }


@pytest.mark.parametrize("name", DEFENSES)
def test_defense_scenario_is_the_grid_edge_case_pgd_cell(name: str, grid_cells: dict[str, dict]) -> None:
    s = load_scenario(SCENARIOS / f"defense_{name}.toml")
    assert s.defenses.aggregator.name == name
    a, b = s.resolved(), grid_cells[name]
    for d in (a, b):
        for key in ("name", "description", "simulation"):  # the grid runs inline, the file on ray
            d.pop(key)
    assert a == b


def test_defense_scenarios_share_the_edge_case_attack_of_backdoor_edge_pgd() -> None:
    s = load_scenario(SCENARIOS / "defense_multi_metrics.toml")
    ref = load_scenario(SCENARIOS / "backdoor_edge_pgd.toml")
    assert s.attacks.backdoor == ref.attacks.backdoor
    assert s.data == ref.data and s.model.name == ref.model.name


@pytest.mark.parametrize("name", DEFENSES)
def test_defense_scenario_runs(name: str) -> None:
    r = run(load_scenario(SCENARIOS / f"defense_{name}.toml", TINY), write=False)
    assert r.status == "completed" and len(r.rounds) == 2
    assert r.rounds[1].malicious  # the attacker acts in round 2 and is recorded
    assert r.rounds[1].clients_aggregated >= 1 and r.rounds[-1].main_accuracy is not None
    assert r.rounds[-1].backdoor_accuracy is not None
    assert r.defense["aggregator"] == name
