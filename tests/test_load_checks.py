"""Settings that would be silently ignored are refused when the scenario loads, by capability, not by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.scenario import ScenarioError, load_scenario
from simulator.sketching.base import COMPRESSORS

ROOT = Path(__file__).resolve().parents[1]


def test_fetchsgd_with_a_per_client_aggregator_is_refused() -> None:
    # FetchSGD merges sketches before decoding: Krum would never be called, yet the summary would say krum
    with pytest.raises(ScenarioError, match=r"defenses\.aggregator\.name.*aggregates in sketch space"):
        load_scenario(ROOT / "scenarios" / "fetchsgd.toml", ["defenses.aggregator.name='krum'"])
    # the same holds for any compressor that declares the capability, e.g. a sketch set to aggregate in sketch
    # space
    with pytest.raises(ScenarioError, match="aggregates in sketch space"):
        load_scenario(
            ROOT / "scenarios" / "sketch_fedavg.toml",
            ["compression.params.aggregate_in_sketch_space=true", "defenses.aggregator.name='median'"],
        )
    load_scenario(  # decodes each client: any aggregator
        ROOT / "scenarios" / "sketch_fedavg.toml",
        ["compression.params.aggregate_in_sketch_space=false", "defenses.aggregator.name='median'"],
    )


def test_compressor_capabilities_are_declared_not_inferred_from_names() -> None:
    caps = {
        name: (c.aggregates_in_sketch_space, c.decodes_alone, c.is_sketch)
        for name in ("none", "srht", "gaussian_sketch", "count_sketch", "fetchsgd", "topk")
        for c in [COMPRESSORS.create(name, {})]
    }
    assert caps["none"] == (False, True, False)
    assert caps["srht"] == caps["gaussian_sketch"] == caps["count_sketch"] == (False, True, True)
    assert caps["fetchsgd"][0] is True and caps["topk"][1] is False


def test_inversion_on_a_sketch_space_aggregate_is_refused_in_both_kinds() -> None:
    with pytest.raises(ScenarioError, match="no per-client update to attack"):
        load_scenario(ROOT / "scenarios" / "fl_with_inversion.toml", ["compression={name='fetchsgd'}"])
    with pytest.raises(ScenarioError, match=r"compression\.name.*no per-client payload"):
        load_scenario(ROOT / "scenarios" / "leakage_ig.toml", ["compression={name='fetchsgd'}"])


def test_a_leakage_experiment_refuses_the_sections_it_would_ignore() -> None:
    """kind = "leakage" runs one victim's payload: federation, evaluation, attacker plan, backdoor, aggregator
    and server defenses would be silently ignored, so each is one error naming the section."""
    cases = {
        "federation": ["federation.rounds=3"],
        "defenses.aggregator": ["defenses.aggregator.name='krum'"],
        "attacks.backdoor": ["attacks.backdoor={name='badnets'}"],
        "evaluation": ["evaluation.every=2"],
    }
    for field, over in cases.items():
        with pytest.raises(ScenarioError, match=rf"- {field.replace('.', '[.]')}:"):
            load_scenario(ROOT / "scenarios" / "leakage_ig.toml", over)
    load_scenario(
        ROOT / "scenarios" / "leakage_ig.toml", ["defenses.client=[{name='gaussian_noise'}]"]
    )  # used
