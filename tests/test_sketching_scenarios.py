"""The sketching scenario files load, validate and build their compressor."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.scenario import ScenarioError, load_scenario
from simulator.sketching import COMPRESSORS

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


@pytest.mark.parametrize(
    "file,compressor",
    [("sketch_fedavg.toml", "srht"), ("fetchsgd.toml", "fetchsgd"), ("sketch_dp.toml", "srht")],
)
def test_sketching_scenarios_load(file: str, compressor: str) -> None:
    s = load_scenario(SCENARIOS / file)
    assert s.compression.name == compressor
    assert s.data.dataset == "mnist5k" and s.data.num_clients == 20 and s.model.name == "cnn"
    comp = COMPRESSORS.create(s.compression.name, s.compression.params)
    if file == "sketch_dp.toml":
        assert comp.privacy_params() == (1.0, 1.0)  # type: ignore[attr-defined]


def test_a_bad_compressor_param_fails_at_load_time() -> None:
    with pytest.raises(ScenarioError, match=r"compression\.params\.ratio"):
        load_scenario(SCENARIOS / "sketch_fedavg.toml", ["compression.params.ratio=1.5"])
    with pytest.raises(ScenarioError, match="did you mean"):
        load_scenario(SCENARIOS / "fetchsgd.toml", ["compression.params.momentun=0.5"])
