"""Same numbers before and after a refactor: a set of shipped scenarios, shrunk (few rounds, little data,
inline engine, fixed seed and DP noise seed), must reproduce the summary numbers stored in
``tests/data/regression_values.json``. Regenerate them only on purpose, when results are meant to change:

    PRIVSIM_UPDATE_REGRESSION=1 python -m pytest -q tests/test_regression.py
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from simulator import load_scenario, run

ROOT = Path(__file__).resolve().parents[1]
VALUES = ROOT / "tests" / "data" / "regression_values.json"
SMALL = ["simulation.engine='inline'", "data.max_examples=1000"]

CASES: dict[str, list[str]] = {
    "quickstart": [*SMALL, "federation.rounds=2", "federation.local_epochs=1"],
    "backdoor_badnets": [*SMALL, "federation.rounds=2", "federation.local_epochs=1"],
    "defense_median": [
        *SMALL,
        "federation.rounds=2",
        "federation.local_epochs=1",
        "model.warm_start={rounds=1}",
    ],
    "dp_fedavg": ["simulation.engine='inline'", "federation.rounds=2", "privacy.noise_seed=11"],
    "sketch_fedavg": [*SMALL, "federation.rounds=2"],
    "leakage_ig": ["attacks.inversion.params.iterations=30", "attacks.inversion.params.restarts=1"],
    "fl_with_inversion": [
        "federation.rounds=1",
        "attacks.inversion.rounds=[1]",
        "attacks.inversion.targets=[0]",
        "attacks.inversion.params.iterations=30",
    ],
}


def _numbers(r: Any) -> dict[str, Any]:
    d = r.to_dict()
    out: dict[str, Any] = {"status": d["status"]}
    out["rounds"] = [
        {
            k: x.get(k)
            for k in (
                "main_accuracy",
                "train_loss",
                "backdoor_accuracy",
                "epsilon",
                "clients_aggregated",
                "inversion_psnr",
            )
            if x.get(k) is not None
        }
        for x in (rr.flat() for rr in r.rounds)
    ]
    for block, keys in (
        ("final", ("main_accuracy", "backdoor_accuracy")),
        ("privacy", ("epsilon",)),
        ("inversion", ("psnr", "ssim", "label_accuracy")),
    ):
        b = d.get(block) or {}
        for k in keys:
            if isinstance(b.get(k), (int, float)):
                out[f"{block}.{k}"] = b[k]
    return out


def _close(a: Any, b: Any, path: str) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: {len(a)} != {len(b)} entries"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        # accuracies are counts over ≥ 200 test images; losses, PSNR and ε agree to 1e-4 relative
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), f"{path}: stored {b}, got {a}"
    else:
        assert a == b, f"{path}: stored {b!r}, got {a!r}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_shipped_scenario_reproduces_its_stored_numbers(name: str) -> None:
    got = _numbers(run(load_scenario(ROOT / "scenarios" / f"{name}.toml", CASES[name]), write=False))
    stored = json.loads(VALUES.read_text()) if VALUES.is_file() else {}
    if os.environ.get("PRIVSIM_UPDATE_REGRESSION") == "1":
        stored[name] = got
        VALUES.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
        return
    assert name in stored, f"no stored numbers for {name}: run with PRIVSIM_UPDATE_REGRESSION=1 once"
    _close(got, stored[name], name)
