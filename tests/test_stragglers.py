"""Stragglers: the seeded latency model, the deadline stage, and a tiny inline run with late clients."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from simulator import load_scenario
from simulator.latency import ClientSpeed, LatencyModel
from simulator.results import write_outputs
from simulator.round import Candidate, apply_deadline
from simulator.round.deadline import client_seconds
from simulator.runner import run
from simulator.scenario import ScenarioError
from simulator.scenario.core import Distribution, FederationConfig, LatencyConfig

LOGNORMAL = Distribution(distribution="lognormal", median=0.05, sigma=0.5)


def _const(v: float) -> Distribution:
    return Distribution(distribution="constant", value=v)


def _model(seed: int = 0, jitter: float = 0.0, up: Distribution | None = None) -> LatencyModel:
    return LatencyModel(
        LOGNORMAL,
        up or Distribution(distribution="uniform", low=1.0, high=20.0),
        Distribution(distribution="lognormal", median=50.0, sigma=0.3),
        seed=seed,
        jitter=jitter,
    )


# ---- the latency model ----
def test_latency_model_is_reproducible_with_its_seed_and_distinct_per_client():
    a, b, c = _model(seed=7), _model(seed=7), _model(seed=8)
    ids = range(50)
    assert [a.speed(i) for i in ids] == [b.speed(i) for i in ids]  # same seed, same clients
    assert [a.speed(i) for i in ids] != [c.speed(i) for i in ids]
    assert len({a.speed(i).step_seconds for i in ids}) == 50  # every client its own speed
    assert len({a.speed(i).up_mbps for i in ids}) == 50
    assert all(1.0 <= a.speed(i).up_mbps <= 20.0 for i in ids)
    # a client's speed is a property of the client: the same every round without jitter, and its draw does
    # not depend on which other clients were asked before it
    assert all(a.round_speed(3, r) == a.speed(3) for r in (1, 2, 9))
    assert _model(seed=7).speed(42) == a.speed(42)
    # changing one component's distribution leaves the others' draws alone
    d = _model(seed=7, up=_const(5.0))
    assert [d.speed(i).step_seconds for i in ids] == [a.speed(i).step_seconds for i in ids]


def test_lognormal_draws_have_the_median_and_spread_asked_for():
    m = _model(seed=1)
    steps = np.array([m.speed(i).step_seconds for i in range(4001)])
    # sample median of 4001 lognormal draws: relative standard error ≈ 1.25·σ/√n ≈ 1%; 5% tolerance
    assert statistics.median(steps) == pytest.approx(0.05, rel=0.05)
    assert np.log(steps).std() == pytest.approx(0.5, rel=0.05)


def test_jitter_varies_speed_per_round_around_the_clients_own():
    m = _model(seed=2, jitter=0.2)
    base = m.speed(5)
    per_round = [m.round_speed(5, r) for r in range(1, 401)]
    assert len({s.step_seconds for s in per_round}) == 400
    assert m.round_speed(5, 3) == _model(seed=2, jitter=0.2).round_speed(5, 3)  # seeded by (seed, round, id)
    logs = np.log([s.step_seconds / base.step_seconds for s in per_round])
    assert abs(logs.mean()) < 0.05 and logs.std() == pytest.approx(0.2, rel=0.15)  # exp(0.2·z), z ~ N(0, 1)


def test_from_config_seeds_from_the_scenario_unless_given():
    cfg = LatencyConfig(compute=LOGNORMAL, bandwidth_up_mbps=10.0, bandwidth_down_mbps=100.0)
    assert cfg.bandwidth_up_mbps == _const(10.0)  # a bare number is a constant
    a, b = LatencyModel.from_config(cfg, 0), LatencyModel.from_config(cfg, 1)
    assert a.speed(0) != b.speed(0)
    pinned = cfg.model_copy(update={"seed": 5})
    assert LatencyModel.from_config(pinned, 0).speed(0) == LatencyModel.from_config(pinned, 1).speed(0)
    assert LatencyModel.for_federation(FederationConfig(), 0) is None


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("federation.deadline_s=2.0", "deadline_s = 2.0 needs [federation.latency]"),
        (
            "federation.latency={compute={distribution='lognormal', median=0.1}, bandwidth_up_mbps=1, "
            "bandwidth_down_mbps=1}",
            "federation.latency.compute: lognormal takes median and sigma; missing sigma",
        ),
        (
            "federation.latency={compute={distribution='constant', value=0.1, sigma=1}, bandwidth_up_mbps=1, "
            "bandwidth_down_mbps=1}",
            "constant takes value; sigma would be ignored",
        ),
        (
            "federation.latency={compute=0.1, bandwidth_up_mbps={distribution='uniform', low=5, high=1}, "
            "bandwidth_down_mbps=1}",
            "federation.latency.bandwidth_up_mbps: uniform needs low <= high",
        ),
        ("federation.latency={compute=0.1, bandwidth_up_mbps=1}", "bandwidth_down_mbps: Field required"),
        (
            "federation.latency={compute=0.1, bandwidth_up_mbps=1, bandwidth_down_mbps=-3}",
            "bandwidth_down_mbps.value: Input should be greater than 0",
        ),
    ],
)
def test_bad_latency_settings_are_one_clear_message(setting, needle):
    with pytest.raises(ScenarioError) as e:
        load_scenario("scenarios/quickstart.toml", [setting])
    assert needle in str(e.value)


# ---- the deadline stage ----
# constant speeds with round numbers: 0.1 s per step, 8 Mbit/s up (1 MB/s), 80 Mbit/s down (10 MB/s)
HAND = LatencyModel(_const(0.1), _const(8.0), _const(80.0), seed=0)
MB = 1_000_000
DOWN = 10 * MB  # 1 s to download


def _cand(pid: int, steps: object, up_bytes: int = MB) -> Candidate:
    arrays = {"w": np.zeros(up_bytes // 4, dtype=np.float32)}
    return Candidate(pid, arrays=arrays, metrics={"num-examples": 10, "local-steps": steps})


def test_simulated_time_of_hand_made_candidates_is_download_plus_steps_plus_upload():
    # brute force: t = 8·bytes_down/(10⁶·80) + steps·0.1 + 8·bytes_up/(10⁶·8)
    cands = [_cand(0, 0), _cand(1, 10), _cand(2, 20, up_bytes=2 * MB), _cand(3, 50)]
    expect = {0: 1 + 0 + 1, 1: 1 + 1 + 1, 2: 1 + 2 + 2, 3: 1 + 5 + 1}  # down + steps + up, seconds
    for c in cands:
        got = client_seconds(c, HAND, 1, DOWN)
        assert got == pytest.approx(expect[c.partition_id], rel=1e-12)
    on_time, late, sim = apply_deadline(cands, HAND, 1, DOWN, None)
    assert [c.partition_id for c in on_time] == [0, 1, 2, 3] and late == []
    assert sim == pytest.approx(7.0)  # no deadline: the slowest client
    on_time, late, sim = apply_deadline(cands, HAND, 1, DOWN, 10.0)
    assert late == [] and sim == pytest.approx(7.0)  # nobody late: the slowest, below the deadline
    on_time, late, sim = apply_deadline(cands, HAND, 1, DOWN, 10.0, missing=1)
    assert late == [] and sim == 10.0  # the server waited for a client that never answered
    # per-client download sizes
    _, _, sim = apply_deadline(cands[:1], HAND, 1, {0: 20 * MB}, None)
    assert sim == pytest.approx(2 + 0 + 1)
    assert ClientSpeed(0.1, up_mbps=8.0, down_mbps=80.0).seconds(
        steps=3, bytes_up=0, bytes_down=0
    ) == pytest.approx(0.3)


def test_deadline_drops_exactly_the_clients_past_it():
    cands = [_cand(3, 50), _cand(0, 0), _cand(2, 20, up_bytes=2 * MB), _cand(1, 10)]  # 7, 2, 5, 3 s
    failed = Candidate(4, failed="boom")
    no_steps = Candidate(5, arrays={"w": np.zeros(3, np.float32)}, metrics={"num-examples": 3})
    stranger = Candidate(-1, arrays={"w": np.zeros(3, np.float32)}, metrics={"num-examples": 3})
    on_time, late, sim = apply_deadline([*cands, failed, no_steps, stranger], HAND, 1, DOWN, 4.0)
    assert late == [2, 3]  # 5 s and 7 s > 4 s
    assert sim == 4.0  # the server waited until the deadline
    assert [c.partition_id for c in on_time] == [0, 1, 4, 5, -1]  # order kept; errors passed on to step 7
    assert on_time[2] is failed and on_time[4] is stranger
    assert on_time[3].malformed is not None and "local-steps" in on_time[3].malformed
    on_time, late, _ = apply_deadline(cands, HAND, 1, DOWN, 3.0)
    assert late == [2, 3]  # exactly on the deadline (3 s) is on time
    assert apply_deadline(cands, None, 1, DOWN, 4.0) == (cands, [], None)  # no latency model: nothing timed


def test_deadline_drops_the_clients_a_hand_computation_says_for_random_speeds():
    m = _model(seed=3, jitter=0.3)
    rng = np.random.default_rng(0)
    cands = [_cand(p, int(rng.integers(1, 40)), up_bytes=4 * int(rng.integers(1, 50_000))) for p in range(30)]
    rnd, down = 4, 400_000
    times = {}
    for c in cands:  # by hand, from the client's jittered speed in this round
        s = m.round_speed(c.partition_id, rnd)
        up = c.arrays["w"].nbytes
        times[c.partition_id] = (
            8 * down / (1e6 * s.down_mbps)
            + c.metrics["local-steps"] * s.step_seconds
            + 8 * up / (1e6 * s.up_mbps)
        )
    deadline = statistics.median(times.values())
    on_time, late, sim = apply_deadline(cands, m, rnd, down, deadline)
    assert late == sorted(p for p, t in times.items() if t > deadline)
    assert {c.partition_id for c in on_time} == {p for p, t in times.items() if t <= deadline}
    assert 0 < len(late) < 30 and sim == deadline
    _, _, sim = apply_deadline(cands, m, rnd, down, None)
    assert sim == pytest.approx(max(times.values()), rel=1e-12)


# ---- a tiny inline run ----
BASE = [
    "simulation.engine='inline'",
    "data.max_examples=600",
    "data.num_clients=4",
    "data.partitioner.name='iid'",
    "data.partitioner.params={}",
    "federation.clients_per_round=4",
    "federation.rounds=2",
    "federation.local_epochs=2",
    "federation.local_steps=5",  # 120 examples per client, batch 32: every client takes exactly 5 steps
    "federation.lr=0.1",
    "model.name='mlp'",
    "model.params={hidden=[32]}",
    "federation.latency={compute={distribution='lognormal', median=0.1, sigma=1.0}, "
    "bandwidth_up_mbps=1000, bandwidth_down_mbps=1000}",
]


def test_inline_run_records_late_clients_and_aggregates_only_on_time_ones(tmp_path):
    s0 = load_scenario("scenarios/quickstart.toml", BASE)
    m = LatencyModel.for_federation(s0.federation, s0.seed)
    assert m is not None
    compute = sorted((5 * m.speed(p).step_seconds, p) for p in range(4))
    # the deadline halfway between the 2nd and 3rd fastest clients (transfers: < 1 ms each, the same for all)
    deadline = (compute[1][0] + compute[2][0]) / 2
    assert compute[2][0] - compute[1][0] > 0.01
    slow = sorted(p for _, p in compute[2:])
    r = run(
        load_scenario("scenarios/quickstart.toml", [*BASE, f"federation.deadline_s={deadline}"]), write=False
    )
    assert r.status == "completed"
    d = 0
    for rec in r.rounds:
        assert rec.clients_replied == 4 and rec.late == slow
        assert rec.accepted == sorted(set(range(4)) - set(slow)) and rec.clients_aggregated == 2
        assert rec.simulated_seconds == deadline
        d = rec.dense_bytes_up // 2
        assert rec.bytes_up == 2 * d  # only the on-time replies' payloads were received
    summary = r.to_dict()
    assert summary["simulated_time_s"] == pytest.approx(2 * deadline)
    assert summary["replies"]["late"] == 4
    lat = summary["latency"]
    assert lat["deadline_s"] == deadline and lat["on_time_per_round"] == 2 and lat["late_per_round"] == 2
    assert summary["rounds"][0]["late"] == slow and summary["rounds"][0]["simulated_seconds"] == deadline
    write_outputs(r, tmp_path)
    header, *rows = (tmp_path / "rounds.csv").read_text().splitlines()
    cols = header.split(",")
    assert rows[0].split(",")[cols.index("late")] == "2"
    assert float(rows[0].split(",")[cols.index("simulated_seconds")]) == pytest.approx(deadline)

    # no deadline: everybody aggregated; the round lasts as long as its slowest client (+ its transfers)
    free = run(load_scenario("scenarios/quickstart.toml", BASE), write=False)
    for rec in free.rounds:
        assert rec.late == [] and rec.clients_aggregated == 4
        assert rec.simulated_seconds == pytest.approx(compute[-1][0], abs=0.01)
        assert rec.simulated_seconds > compute[-1][0]

    # late clients count against min_replies like any missing reply: 2 on time < 3 needed, model unchanged
    strict = run(
        load_scenario(
            "scenarios/quickstart.toml",
            [*BASE, f"federation.deadline_s={deadline}", "federation.min_replies=3", "federation.rounds=1"],
        ),
        write=False,
    )
    assert strict.rounds[0].late == slow and strict.rounds[0].skipped is not None
    assert math.isfinite(strict.rounds[0].simulated_seconds)
