"""The backdoor example scenarios load, name the attack they are about, and share the quickstart's
data, model and federation settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from attacks.base import CLIENT_ATTACKS
from simulator.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1] / "scenarios"
FILES = {
    "backdoor_badnets.toml": "badnets",
    "backdoor_model_replacement.toml": "model_replacement",
    "backdoor_dba.toml": "model_replacement",  # DBA's scaled attackers: boosting over the "dba" base
    "backdoor_edge_pgd.toml": "pgd",
    "backdoor_neurotoxin.toml": "neurotoxin",
}


@pytest.mark.parametrize("fname", sorted(FILES))
def test_backdoor_scenario_loads(fname):
    s = load_scenario(ROOT / fname)
    assert s.attacks.backdoor is not None and s.attacks.backdoor.name == FILES[fname]
    atk = CLIENT_ATTACKS.create(s.attacks.backdoor.name, s.attacks.backdoor.params)
    assert atk.target_label is not None
    plan = s.attacks.plan
    assert plan.guarantee_sampled and plan.every == 2 and 1 <= (plan.malicious or 0) <= 2
    q = load_scenario(ROOT / "quickstart.toml")
    assert (s.data, s.model, s.federation) == (q.data, q.model, q.federation)
