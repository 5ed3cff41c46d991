"""Scenario loading: defaults, overrides, and one clear message per problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from simulator.scenario import Scenario, ScenarioError, apply_overrides, load_scenario, scenario_from_dict


def test_quickstart_loads_with_documented_values():
    s = load_scenario("scenarios/quickstart.toml")
    assert (s.data.dataset, s.data.num_clients, s.model.name) == ("mnist5k", 20, "cnn")
    assert s.data.partitioner.name == "dirichlet" and s.data.partitioner.params == {"alpha": 0.5}
    assert s.federation.clients_per_round == 10


def test_overrides_parse_toml_values_and_nested_keys():
    d = apply_overrides(
        {"federation": {"rounds": 5}},
        ["federation.rounds=3", "model.params={hidden=[8]}", "name=plain-string"],
    )
    assert d == {"federation": {"rounds": 3}, "model": {"params": {"hidden": [8]}}, "name": "plain-string"}


def test_every_problem_is_reported_with_field_value_and_allowed():
    data = {
        "data": {"datset": "mnist5k", "num_clients": 0},
        "model": {"name": "cnnn"},
        "federation": {"roundz": 2, "sampling": "uniform"},
        "defenses": {"aggregator": {"name": "fedavg", "params": {"foo": 1}}},
    }
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(data, source="bad.toml")
    text = str(e.value)
    paths = {p.path for p in e.value.problems}
    assert paths == {
        "data.datset",
        "data.num_clients",
        "model.name",
        "federation.roundz",
        "federation.sampling",
        "defenses.aggregator.params.foo",
    }
    assert (
        "did you mean 'dataset'" in text and "did you mean 'rounds'" in text and "did you mean 'cnn'" in text
    )
    assert "allowed: cnn, lenet, mlp, resnet18" in text
    assert "'fixed' or 'poisson'" in text and "got 'uniform'" in text
    assert text.startswith("bad.toml: 6 problems")


def test_cross_field_rule_is_explained():
    with pytest.raises(ScenarioError, match="either clients_per_round or sampling_rate"):
        scenario_from_dict({"federation": {"clients_per_round": 3, "sampling_rate": 0.2}})


def test_digest_ignores_output_location_but_not_content():
    a = scenario_from_dict({"output": {"dir": "x"}})
    b = scenario_from_dict({"output": {"dir": "y"}})
    c = scenario_from_dict({"seed": 1})
    d = scenario_from_dict({"name": "other", "description": "same experiment, another file"})
    assert a.digest() == b.digest() == d.digest() != c.digest()


def test_scenario_is_frozen():
    s = Scenario()
    with pytest.raises(ValidationError):
        s.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "{bad}"], "unknown key (did you mean 'rounds'?)"),
        (
            ["run", "scenarios/quickstart.toml", "--set", "model.name=cnnn"],
            "unknown model 'cnnn' (did you mean 'cnn'?)",
        ),
        (["run", "missing.toml"], "file not found"),
        (["list", "agregator"], "did you mean 'aggregator'"),
        # found only when running: the indices are checked against the loaded data set
        (
            [
                "run",
                "scenarios/leakage_ig.toml",
                "--set",
                "leakage.images=[99999]",
                "--out",
                "{tmp}/o",
                "--store",
                "{tmp}/r.sqlite",
            ],
            "leakage.images: indices [99999] outside the data set",
        ),
        (
            ["run", "scenarios/leakage_ig.toml", "--set", "simulation.device='tpu'"],
            "simulation.device: not a device",
        ),
    ],
)
def test_cli_errors_are_one_message_without_traceback(tmp_path: Path, args, needle):
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation]\nroundz = 3\n")
    args = [a.replace("{bad}", str(bad)).replace("{tmp}", str(tmp_path)) for a in args]
    p = subprocess.run(
        [sys.executable, "-m", "simulator.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout


def test_every_example_scenario_validates():
    for f in sorted(Path("scenarios").glob("*.toml")):
        if f.name.startswith("leaderboard") or f.stem.endswith("_grid"):
            continue  # grid files, checked in test_leaderboard
        load_scenario(f)
