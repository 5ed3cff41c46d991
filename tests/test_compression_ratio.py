"""``compression_ratio`` (dense float32 bytes ÷ bytes sent, up and down): every round and summary.json."""

from __future__ import annotations

import pytest

from simulator import load_scenario
from simulator.flat import Layout
from simulator.registry import import_plugins
from simulator.results import RoundRecord, RunResult, write_outputs
from simulator.runner import run
from simulator.sketching.base import COMPRESSORS
from simulator.sketching.comm import communication_cost


def _result(rounds: list[RoundRecord]) -> RunResult:
    return RunResult(
        name="x",
        scenario={},
        scenario_digest="d",
        seed=0,
        engine="inline",
        versions={},
        rounds=rounds,
        wall_time_s=1.0,
        status="completed",
    )


def test_round_and_run_ratios_are_dense_bytes_over_bytes_sent(tmp_path):
    a = RoundRecord(round=1, bytes_up=100, dense_bytes_up=1000, bytes_down=4000, dense_bytes_down=4000)
    b = RoundRecord(round=2, bytes_up=300, dense_bytes_up=1000, bytes_down=4000, dense_bytes_down=4000)
    empty = RoundRecord(round=3)  # no reply, nothing sent
    assert (a.compression_ratio_up, a.compression_ratio_down) == (10.0, 1.0)
    assert b.flat()["compression_ratio_up"] == pytest.approx(1000 / 300)
    assert empty.flat()["compression_ratio_up"] is None and empty.flat()["compression_ratio_down"] is None
    comm = _result([a, b, empty]).to_dict()["communication"]
    # over the run: total dense bytes ÷ total bytes (not the mean of the per-round ratios)
    assert comm["compression_ratio"] == {"up": 2000 / 400, "down": 1.0}
    assert (comm["dense_bytes_up"], comm["dense_bytes_down"]) == (2000, 8000)
    assert _result([]).to_dict()["communication"]["compression_ratio"] == {"up": None, "down": None}
    write_outputs(_result([a, b, empty]), tmp_path)
    header, r1, _, r3 = (tmp_path / "rounds.csv").read_text().splitlines()
    cols = header.split(",")
    assert "late" not in cols and "simulated_seconds" not in cols  # no latency model in this run
    assert float(r1.split(",")[cols.index("compression_ratio_up")]) == 10.0
    assert r3.split(",")[cols.index("compression_ratio_up")] == ""


def test_a_topk_run_reports_the_compressors_ratio_in_every_round():
    s = load_scenario(
        "scenarios/quickstart.toml",
        [
            "simulation.engine='inline'",
            "data.max_examples=400",
            "data.num_clients=4",
            "federation.clients_per_round=3",
            "federation.rounds=2",
            "federation.local_steps=2",
            "model.name='mlp'",
            "model.params={hidden=[16]}",
            "compression={name='topk', params={k_ratio=0.05}}",
        ],
    )
    r = run(s, write=False)
    import_plugins()
    for rec in r.rounds:
        n = rec.clients_aggregated
        assert n == 3
        d = rec.dense_bytes_up // (4 * n)
        expect = communication_cost(COMPRESSORS.create("topk", {"k_ratio": 0.05}), Layout(("w",), ((d,),)))
        assert rec.compression_ratio_up == pytest.approx(expect.ratio, rel=1e-12)  # 4d / (k int32 + k f32)
        assert rec.bytes_up == n * expect.bytes_up
        # the downlink is the dense model; Flower's count adds each array's name and .npy header
        assert 0.95 < rec.compression_ratio_down <= 1.0
    comm = r.to_dict()["communication"]
    assert comm["compression_ratio"]["up"] == pytest.approx(r.rounds[0].compression_ratio_up)
