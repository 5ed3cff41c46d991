"""The empirical privacy audit: no false alarm on correct mechanisms, power against a broken one, and the
``[audit]`` section end to end (canary clients in a real DP-FedAvg run)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from simulator import load_scenario, run
from simulator.audit.mechanism import audit_dp_fedavg
from simulator.scenario import ScenarioError

ROOT = Path(__file__).resolve().parents[1]
DP_FEDAVG = ROOT / "scenarios" / "dp_fedavg.toml"


@pytest.mark.parametrize("z", [0.5, 2.0])
def test_correct_dp_fedavg_is_never_audited_above_its_ledger(z: float) -> None:
    """1,000 canary clients, Poisson q = 0.25, 20 rounds: the one-run bound stays below the ledger's ε, and
    the audit is not empty (it sees the leak)."""
    a = audit_dp_fedavg(noise_multiplier=z, seed=3)
    assert 0.2 < a.block["epsilon_lower"] <= a.epsilon_upper
    assert a.block["auc"] > 0.6


def test_a_mechanism_with_a_quarter_of_its_noise_is_caught() -> None:
    """The ledger accounts z = 8 (9 rounds, every client every round: ε ≈ 1.45), but the mechanism adds z = 2:
    the audit's lower bound exceeds the reported ε, while the correct mechanism's does not."""
    broken = audit_dp_fedavg(noise_multiplier=8.0, noise_scale=0.25, sampling_rate=1.0, rounds=9, seed=0)
    correct = audit_dp_fedavg(noise_multiplier=8.0, noise_scale=1.0, sampling_rate=1.0, rounds=9, seed=0)
    assert broken.epsilon_upper == pytest.approx(correct.epsilon_upper) == pytest.approx(1.45, abs=0.01)
    assert broken.block["epsilon_lower"] > broken.epsilon_upper
    assert correct.block["epsilon_lower"] < correct.epsilon_upper


def test_no_noise_means_infinite_upper_and_a_large_lower_bound() -> None:
    a = audit_dp_fedavg(noise_multiplier=0.0, rounds=2, sampling_rate=1.0, seed=0)
    assert math.isinf(a.epsilon_upper)
    # perfect separation: close to the most 1,000 canaries can show at δ = 1e-5 (3.26 with 500 / 500)
    assert a.block["auc"] == 1.0 and 3.0 < a.block["epsilon_lower"] <= 3.26


@pytest.mark.slow
def test_audit_section_in_a_dp_fedavg_run(tmp_path: Path) -> None:
    over = [
        "simulation.engine='inline'",
        "federation.rounds=2",
        "privacy.noise_seed=5",
        "privacy.client={clip_norm=1.0, noise_multiplier=1.0}",
    ]
    plain = run(load_scenario(DP_FEDAVG, over), write=False)
    audited = run(
        load_scenario(DP_FEDAVG, [*over, "audit={canaries=1000}"]),
        out_dir=tmp_path / "a",
        store=tmp_path / "s.sqlite",
    )
    a = audited.audit
    assert a["canaries"] == 1000 and a["level"] == "client" and a["confidence"] == 0.95
    assert a["epsilon_upper"] == pytest.approx(audited.privacy["epsilons"]["aggregate"])
    assert 0.0 <= a["epsilon_lower"] <= a["epsilon_upper"]
    assert {"all_iterates_max", "all_iterates_likelihood", "final_model"} <= set(a["statistics"])
    assert (tmp_path / "a" / "audit_scores.png").stat().st_size > 10_000
    for r in audited.rounds:  # canaries joined the sum but are never listed as clients
        assert r.audit_canaries > 0 and all(c >= 0 for c in r.accepted)
    # the canaries barely move the model: same noise (noise_seed), ≤ 1 point of accuracy
    assert abs(audited.rounds[-1].main_accuracy - plain.rounds[-1].main_accuracy) < 0.01
    assert audited.privacy["epsilon"] == pytest.approx(plain.privacy["epsilon"])


def test_audit_settings_that_cannot_work_fail_at_load() -> None:
    with pytest.raises(ScenarioError, match=r"audit\.canaries"):
        load_scenario(DP_FEDAVG, ["audit={canaries=10}"])
    with pytest.raises(ScenarioError, match=r"audit\.level"):
        load_scenario(DP_FEDAVG, ["audit={level='record'}"])
    with pytest.raises(ScenarioError, match=r"audit\.level"):
        load_scenario(ROOT / "scenarios" / "sketch_fedavg.toml", ["audit={canaries=1000}"])


@pytest.mark.slow
def test_record_level_audit_puts_canaries_in_their_clients_data() -> None:
    """Canary examples join their owners' local data (the clients train on more examples), are scored by the
    final model's loss, and the upper bound is the ledger's record-level ε."""
    over = [
        "simulation.engine='inline'",
        "federation.rounds=1",
        "data.num_clients=4",
        "federation.clients_per_round=4",
        "data.max_examples=400",
        "model.name='mlp'",
        "model.params={hidden=[16]}",
        "privacy.target_epsilon=1000",
        "federation.batch_size=10",
    ]
    plain = run(load_scenario(ROOT / "scenarios" / "dp_sgd.toml", over), write=False)
    audited = run(
        load_scenario(ROOT / "scenarios" / "dp_sgd.toml", [*over, "audit={level='record', canaries=100}"]),
        write=False,
    )
    a = audited.audit
    assert a["level"] == "record" and a["statistic"] == "final_model_loss" and a["threat"] == "final_model"
    assert a["epsilon_upper"] == pytest.approx(audited.privacy["epsilon"])
    assert 0.0 <= a["epsilon_lower"] <= a["epsilon_upper"]
    assert a["statistics"]["final_model_loss"]["in"] == a["inserted"] > 0
    # the inserted canaries made the clients' local data larger: Opacus's sampling rate 1/batches fell with it
    rate = lambda r: r.privacy["ledger"]["views"]["records"]["events"][0]["event"]  # noqa: E731
    assert rate(audited) != rate(plain)


def test_privsim_audit_command_adds_a_default_audit(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from simulator.cli import app

    res = CliRunner().invoke(
        app,
        [
            "audit",
            str(DP_FEDAVG),
            "--quiet",
            "--out",
            str(tmp_path / "o"),
            "--store",
            str(tmp_path / "s.sqlite"),
            "--set",
            "federation.rounds=1",
            "--set",
            "simulation.engine='inline'",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "client-level audit, 1000 canaries" in res.output and "ledger epsilon" in res.output
    assert (tmp_path / "o" / "audit_scores.png").is_file()
    bad = CliRunner().invoke(app, ["audit", str(DP_FEDAVG), "--canaries", "8"])
    assert bad.exit_code == 2 and "audit.canaries" in bad.output and "Traceback" not in bad.output
