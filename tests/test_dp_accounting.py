"""User-level accounting, calibration, budget stop and load-time sampling/analysis checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dp_accounting import dp_event as E
from dp_accounting.pld import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp import RdpAccountant

from simulator.context import RoundContext
from simulator.dp.accounting import ClientLevelAccounting, calibrate_noise_multiplier, client_level_accounting
from simulator.dp.build import build_privacy
from simulator.dp.mechanism import ClientLevelDP
from simulator.flat import Layout
from simulator.scenario import ScenarioError, load_scenario, scenario_from_dict

ROOT = Path(__file__).resolve().parents[1]


def _acc(
    z: float, *, q: float = 0.1, sampling: str = "poisson", accountant: str = "pld"
) -> ClientLevelAccounting:
    return ClientLevelAccounting(
        noise_multiplier=z,
        sampling=sampling,
        sampling_rate=q,
        num_clients=100,
        sample_size=int(q * 100),
        delta=1e-5,
        accountant=accountant,
    )


def _dp_fedavg(**privacy) -> dict:
    return {
        "data": {"dataset": "mnist5k", "num_clients": 20},
        "federation": {"rounds": 5, "sampling": "poisson", "sampling_rate": 0.25},
        "privacy": {"level": "client", **privacy},
    }


def _rctx(rnd: int) -> RoundContext:
    return RoundContext(
        server_round=rnd,
        seed=0,
        global_vector=torch.zeros(8),
        layout=Layout(("w",), ((8,),)),
        client_ids=(),
        num_examples=(),
        num_clients=20,
        expected_clients_per_round=5.0,
    )


def test_poisson_epsilon_matches_independent_pld_within_1pct() -> None:
    q, z, t, delta = 0.1, 1.1, 30, 1e-5
    lib = PLDAccountant(NeighboringRelation.ADD_OR_REMOVE_ONE)
    lib.compose(E.PoissonSampledDpEvent(q, E.GaussianDpEvent(z)), t)
    expected = lib.get_epsilon(delta)
    got = _acc(z, q=q).epsilon(t)
    assert abs(got - expected) <= 0.01 * expected
    rdp = RdpAccountant()
    rdp.compose(E.PoissonSampledDpEvent(q, E.GaussianDpEvent(z)), t)
    assert abs(_acc(z, q=q).epsilon(t, "rdp") - rdp.get_epsilon(delta)) <= 1e-9 * rdp.get_epsilon(delta)
    assert expected <= rdp.get_epsilon(delta)  # PLD is the tighter one


def test_fixed_size_uses_rdp_replace_one_and_refuses_pld() -> None:
    acc = _acc(1.0, sampling="fixed", accountant="rdp")
    lib = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    # replace-one moves the sum by 2C: dp-accounting's multiplier (std / sensitivity) is z/2
    lib.compose(E.SampledWithoutReplacementDpEvent(100, 10, E.GaussianDpEvent(0.5)), 10)
    assert acc.epsilon(10) == pytest.approx(lib.get_epsilon(1e-5), rel=1e-9)
    assert acc.privacy_block(rounds=10, level="client")["neighboring_relation"] == "replace_one"
    with pytest.raises(ValueError, match="PLD"):
        _acc(1.0, sampling="fixed", accountant="pld")


def test_privacy_block_lets_anyone_recompute_epsilon() -> None:
    b = _acc(1.3, q=0.2).privacy_block(rounds=7, level="client")
    lib = PLDAccountant()
    lib.compose(
        E.PoissonSampledDpEvent(b["sampling_rate"], E.GaussianDpEvent(b["noise_multiplier"])), b["steps"]
    )
    assert b["epsilon"] == pytest.approx(lib.get_epsilon(b["delta"]), rel=1e-3)
    assert {
        "epsilon",
        "delta",
        "accountant",
        "level",
        "noise_multiplier",
        "sampling_rate",
        "steps",
        "sampling",
        "neighboring_relation",
        "epsilon_rdp",
    } <= set(b)


def test_calibration_hits_target_from_below() -> None:
    target, rounds = 3.0, 20
    z = calibrate_noise_multiplier(
        target_epsilon=target, rounds=rounds, make=lambda z: _acc(z, q=0.2), tol=0.01
    )
    eps = _acc(z, q=0.2).epsilon(rounds)
    assert target * 0.99 <= eps <= target  # tolerance 1 % below the target, never above
    assert _acc(z * 0.98, q=0.2).epsilon(rounds) > eps


def test_budget_stop_exactly_at_the_round_before_exceeding() -> None:
    s = scenario_from_dict(_dp_fedavg(target_epsilon=3.0, client={"noise_multiplier": 1.0}))
    mech = build_privacy(s)
    assert isinstance(mech, ClientLevelDP)
    lib_eps = []
    for t in range(1, 40):
        lib = PLDAccountant()
        lib.compose(E.PoissonSampledDpEvent(0.25, E.GaussianDpEvent(1.0)), t)
        lib_eps.append(lib.get_epsilon(1e-5))
        if lib_eps[-1] > 3.0:
            break
    last_ok = len(lib_eps) - 1  # ε(last_ok) ≤ 3 < ε(last_ok + 1)
    assert last_ok >= 1
    for rnd in range(1, last_ok + 1):
        mech.server_aggregate(torch.zeros(8), [], _rctx(rnd))
        rep = mech.round_report(rnd, [])
        assert rep["epsilon"] <= 3.0
        assert mech.budget_exhausted() is (rnd == last_ok)


def test_mismatched_sampling_and_analysis_fails_at_load() -> None:
    data = _dp_fedavg()
    data["federation"] = {"rounds": 5, "sampling": "fixed", "clients_per_round": 5}
    with pytest.raises(ScenarioError, match="PLD accountant cannot analyse"):
        scenario_from_dict(data)
    data["privacy"]["accountant"] = "rdp"
    s = scenario_from_dict(data)  # fixed-size + RDP replace-one is a valid, labelled analysis
    assert client_level_accounting(s).neighboring_relation == NeighboringRelation.REPLACE_ONE
    bad = _dp_fedavg(client={"noise_multiplier": 1.0, "adaptive_clipping": {"clipped_count_stddev": 0.25}})
    with pytest.raises(ScenarioError, match="clipped_count_stddev"):
        scenario_from_dict(bad)
    with pytest.raises(ScenarioError, match="one round already costs"):
        scenario_from_dict(_dp_fedavg(target_epsilon=0.01))


def test_calibrate_on_budget_builds_mechanism_within_target() -> None:
    s = scenario_from_dict(_dp_fedavg(target_epsilon=4.0, on_budget="calibrate"))
    mech = build_privacy(s)
    assert isinstance(mech, ClientLevelDP)
    eps = mech.plan.epsilon(s.federation.rounds)
    assert 4.0 * 0.99 <= eps <= 4.0
    for rnd in range(1, s.federation.rounds + 1):  # what ran: the ledger agrees with the plan
        mech.server_aggregate(torch.zeros(8), [], _rctx(rnd))
    assert mech.ledger.epsilon("aggregate") == pytest.approx(eps, rel=1e-9)


@pytest.mark.parametrize("name", ["dp_sgd.toml", "dp_fedavg.toml"])
def test_scenario_files_load(name: str) -> None:
    s = load_scenario(ROOT / "scenarios" / name)
    assert s.privacy.level in ("record", "client")
    assert build_privacy(s).summary() is not None
