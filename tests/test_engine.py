"""The federated runtime: both engines agree, bad replies are rejected and recorded, dropouts."""

from __future__ import annotations

import math

import pytest

from simulator import load_scenario
from simulator.runner import run
from tests.helpers.misbehaving import registered

SMALL = [
    "data.max_examples=600",
    "data.num_clients=6",
    "federation.clients_per_round=4",
    "federation.rounds=2",
    "federation.local_epochs=3",
    "federation.lr=0.1",
    "model.name='mlp'",
    "model.params={hidden=[32]}",
]


def _small(*extra: str):
    return load_scenario("scenarios/quickstart.toml", [*SMALL, *extra])


def test_inline_run_learns_and_records_every_round():
    r = run(_small("simulation.engine='inline'", "federation.rounds=3"), write=False)
    assert r.status == "completed"
    assert [x.round for x in r.rounds] == [1, 2, 3]
    assert all(x.clients_sampled == 4 and x.clients_aggregated == 4 for x in r.rounds)
    assert r.rounds[-1].main_accuracy > 0.5  # 600 digits, tiny MLP, 3 rounds: far above chance (0.1)
    assert r.rounds[0].bytes_up > 0 and r.rounds[0].bytes_down > 0


@pytest.mark.slow
def test_inline_and_ray_give_the_same_per_round_accuracy():
    a = run(_small("simulation.engine='inline'"), write=False)
    b = run(_small("simulation.engine='ray'", "simulation.ray_num_cpus=2"), write=False)
    assert [x.main_accuracy for x in a.rounds] == [x.main_accuracy for x in b.rounds]
    assert [x.sampled for x in a.rounds] == [x.sampled for x in b.rounds]
    assert [x.main_loss for x in a.rounds] == pytest.approx([x.main_loss for x in b.rounds], rel=1e-5)


def test_nan_wrong_shape_and_crashing_clients_are_rejected_and_recorded():
    with registered():
        _rejected_and_recorded()


def _rejected_and_recorded() -> None:
    s = _small(
        "simulation.engine='inline'",
        "attacks.backdoor.name='test_misbehave'",
        "attacks.plan.malicious_ids=[0, 1, 2]",
        "attacks.plan.collude=true",
        "federation.clients_per_round=5",
    )
    r = run(s, write=False)
    assert r.status == "completed"
    for rec in r.rounds:
        rejected = {x["partition"] for x in rec.rejected}
        failed = {x["partition"] for x in rec.failed}
        assert rejected == {0, 1}, rec.rejected
        assert failed == {2}
        assert any("non-finite" in x["reason"] for x in rec.rejected)
        assert any("shape" in x["reason"] for x in rec.rejected)
        assert "crashed on purpose" in rec.failed[0]["reason"]
        assert rec.clients_aggregated == 2 and set(rec.accepted).isdisjoint({0, 1, 2})
        assert math.isfinite(rec.main_loss)


def test_all_replies_invalid_leaves_the_model_unchanged():
    with registered():
        s = _small(
            "simulation.engine='inline'",
            "attacks.backdoor.name='test_nan_update'",
            "attacks.plan.malicious_fraction=1.0",
        )
        r = run(s, write=False)
    assert all(x.clients_aggregated == 0 for x in r.rounds)
    assert r.rounds[0].skipped
    assert r.rounds[0].main_accuracy == r.rounds[1].main_accuracy  # nothing applied


def test_dropouts_are_recorded_and_reproducible():
    s = _small("simulation.engine='inline'", "federation.dropout=0.5", "federation.rounds=3")
    a, b = run(s, write=False), run(s, write=False)
    dropped = [x.dropped for x in a.rounds]
    assert dropped == [x.dropped for x in b.rounds]
    assert sum(map(len, dropped)) > 0
    for rec in a.rounds:
        assert rec.clients_aggregated == rec.clients_sampled - len(rec.dropped)
        assert set(rec.dropped) <= set(rec.sampled)


def test_poisson_sampling_draws_each_client_independently():
    import tomllib

    import numpy as np

    from simulator.context import derive_seed
    from simulator.scenario import apply_overrides, scenario_from_dict

    with open("scenarios/quickstart.toml") as f:
        data = tomllib.loads(f.read())
    del data["federation"]["clients_per_round"]
    data = apply_overrides(
        data,
        [x for x in SMALL if "clients_per_round" not in x]
        + [
            "simulation.engine='inline'",
            "federation.sampling='poisson'",
            "federation.sampling_rate=0.5",
            "federation.rounds=4",
        ],
    )
    s = scenario_from_dict(data)
    r = run(s, write=False)
    for rec in r.rounds:  # independent re-computation of the Bernoulli(q) draws
        u = np.random.default_rng(derive_seed(s.seed, "sample", rec.round)).random(6)
        assert rec.sampled == [int(i) for i in np.flatnonzero(u < 0.5)]
    assert len({x.clients_sampled for x in r.rounds}) > 1
