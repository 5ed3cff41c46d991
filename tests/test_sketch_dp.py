"""DP on the sketch: load-time checks, ε from the compressor's (z, C) against dp-accounting directly, and a
run."""

from __future__ import annotations

import pytest
from dp_accounting import dp_event as E
from dp_accounting.pld import pld_privacy_accountant as pld
from dp_accounting.rdp import rdp_privacy_accountant as rdp

from simulator import load_scenario
from simulator.dp.build import build_privacy
from simulator.dp.sketch_dp import SketchDP
from simulator.runner import run
from simulator.scenario import ScenarioError
from simulator.sketching import COMPRESSORS

SKETCH_DP = "scenarios/sketch_dp.toml"


def _pld_eps(event: E.DpEvent, count: int, delta: float) -> float:
    acc = pld.PLDAccountant()
    acc.compose(event, count)
    return acc.get_epsilon(delta)


def test_noise_without_clip_fails_at_load_time() -> None:
    with pytest.raises(
        ScenarioError, match=r"compression\.params: 'srht': noise_multiplier > 0 needs clip_norm"
    ):
        load_scenario("scenarios/sketch_fedavg.toml", ["compression.params.noise_multiplier=1.0"])


def test_sketch_noise_with_record_level_dp_is_refused() -> None:
    with pytest.raises(ScenarioError, match=r"privacy\.level"):
        load_scenario(SKETCH_DP, ["privacy.level='record'"])


def test_accountant_reads_the_compressors_privacy_params() -> None:
    s = load_scenario(
        SKETCH_DP, ["compression.params.noise_multiplier=1.3", "compression.params.clip_norm=0.5"]
    )
    mech = build_privacy(s, COMPRESSORS.create(s.compression.name, s.compression.params))
    assert isinstance(mech, SketchDP) and mech.acc.noise_multiplier == 1.3 and mech.clip_norm == 0.5
    # fixed-size cohorts of 10 of 20 clients: RDP with sampling without replacement (replace-one), as
    # dp-accounting
    cohort = [{"partition-id": p} for p in range(10)]
    reports = [mech.round_report(r, cohort) for r in (1, 2, 3)]
    # the sum behind a secure aggregation: fixed-size cohorts of 10 of 20, replace-one (sensitivity 2gC: z/2),
    # RDP
    ev = E.SampledWithoutReplacementDpEvent(20, 10, E.GaussianDpEvent(0.65))
    ref = rdp.RdpAccountant(neighboring_relation=rdp.NeighborRel.REPLACE_ONE)
    ref.compose(ev, 3)
    assert reports[-1]["epsilon_aggregate"] == pytest.approx(ref.get_epsilon(s.privacy.delta), rel=1e-9)
    # one sketch in the clear (no secure aggregation here, so the headline): z/2, three rounds, no sampling
    single = _pld_eps(E.GaussianDpEvent(0.65), 3, s.privacy.delta)
    assert reports[-1]["epsilon_update_in_clear"] == pytest.approx(single, rel=1e-6)
    assert reports[-1]["epsilon"] == reports[-1]["epsilon_update_in_clear"]
    assert (
        reports[0]["epsilon"]
        < reports[1]["epsilon"]
        < reports[2]["epsilon"]
        == pytest.approx(single, rel=1e-6)
    )


def test_poisson_cohorts_use_pld_with_amplification() -> None:
    import tomllib

    from simulator.scenario.loader import scenario_from_dict

    with open(SKETCH_DP) as f:
        d = tomllib.loads(f.read())
    del d["federation"]["clients_per_round"]
    d["federation"].update(sampling="poisson", sampling_rate=0.25)
    s = scenario_from_dict(d)
    mech = build_privacy(s, COMPRESSORS.create(s.compression.name, s.compression.params))
    eps = mech.round_report(1, [{"partition-id": 3}])["epsilon_aggregate"]
    ref = _pld_eps(E.PoissonSampledDpEvent(0.25, E.GaussianDpEvent(1.0)), 1, s.privacy.delta)
    assert eps == pytest.approx(ref, rel=1e-6)


def test_robust_aggregator_drops_the_sum_view_but_keeps_the_local_one() -> None:
    s = load_scenario(
        SKETCH_DP, ["defenses.aggregator.name='median'", "compression.params.aggregate_in_sketch_space=false"]
    )
    mech = build_privacy(s, COMPRESSORS.create(s.compression.name, s.compression.params))
    rep = mech.round_report(1, [{"partition-id": 0}])
    assert "epsilon_aggregate" not in rep
    assert rep["epsilon"] == pytest.approx(_pld_eps(E.GaussianDpEvent(0.5), 1, s.privacy.delta), rel=1e-6)


def test_no_noise_means_no_privacy_claim() -> None:
    s = load_scenario("scenarios/sketch_fedavg.toml")
    mech = build_privacy(s, COMPRESSORS.create(s.compression.name, s.compression.params))
    assert type(mech).__name__ == "NoPrivacy"


def test_sketch_dp_run_reports_epsilon_every_round() -> None:
    s = load_scenario(
        SKETCH_DP,
        [
            "simulation.engine='inline'",
            "federation.rounds=2",
            "data.max_examples=600",
            "model.name='mlp'",
            "model.params={hidden=[32]}",
        ],
    )
    r = run(s, write=False)
    assert r.status == "completed"
    eps = [x.privacy["epsilon"] for x in r.rounds]
    assert 0 < eps[0] < eps[1]
    assert r.privacy["level"] == "client (sketch)"
    assert r.privacy["epsilon"] == pytest.approx(eps[-1])
    assert r.rounds[0].bytes_up > 0
