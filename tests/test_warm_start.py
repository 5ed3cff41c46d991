"""Warm start ([model.warm_start]): attack-free FedAvg pre-training, its cache, checkpoints, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from simulator import load_scenario
from simulator.context import make_generator
from simulator.flower.runtime import build_runtime
from simulator.runner import run
from simulator.scenario.loader import ScenarioError
from simulator.training import evaluate, train_local
from simulator.warm_start import apply_warm_start, fedavg_pretrain, warm_start_key

SMALL = [
    "data.max_examples=600",
    "data.num_clients=4",
    "federation.clients_per_round=4",
    "federation.rounds=1",
    "federation.local_epochs=1",
    "federation.lr=0.1",
    "model.name='mlp'",
    "model.params={hidden=[16]}",
    "simulation.engine='inline'",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVSIM_CACHE", str(tmp_path / "cache"))


def _rt(*extra: str):
    return build_runtime(load_scenario("scenarios/quickstart.toml", [*SMALL, *extra]))


def test_one_full_participation_round_is_the_example_weighted_mean_of_independent_local_training():
    rt = _rt()
    model = copy.deepcopy(rt.model)
    fedavg_pretrain(model, rt.data, rt.train, rounds=1, cohort=4, seed=rt.scenario.seed)
    # brute force: train four copies from the same start with the same per-client streams, average by size
    sums, total = None, 0
    for pid in range(4):
        m = copy.deepcopy(rt.model)
        x, y = rt.data.client(pid)
        train_local(m, x, y, rt.train, generator=make_generator(rt.scenario.seed, "warm_start", 1, pid))
        v = torch.cat([p.detach().reshape(-1) for p in m.parameters()]) * x.shape[0]
        sums = v if sums is None else sums + v
        total += x.shape[0]
    got = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.allclose(got, sums / total, atol=1e-6)


def test_warm_start_trains_is_cached_and_reloads_identically(tmp_path):
    rt = _rt("model.warm_start={rounds=3}")
    cold, _ = evaluate(rt.model, rt.data.test.x, rt.data.test.y)
    a, b = copy.deepcopy(rt.model), copy.deepcopy(rt.model)
    info_a = apply_warm_start(a, rt.scenario, rt.data, rt.train)
    info_b = apply_warm_start(b, rt.scenario, rt.data, rt.train)
    assert info_a["cached"] is False and info_b["cached"] is True and info_a["key"] == info_b["key"]
    assert (tmp_path / "cache" / "warm_start" / f"{info_a['key']}.pt").is_file()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert (
        info_a["main_accuracy"] == info_b["main_accuracy"] > cold + 0.3
    )  # 600 digits, 3 rounds: far above chance
    # anything that changes the weights changes the key: rounds, seed, the client partitions
    for other in ("model.warm_start={rounds=4}", "seed=1", "data.num_clients=5", "federation.lr=0.2"):
        rt2 = _rt("model.warm_start={rounds=3}", other)
        assert warm_start_key(rt2.scenario, rt2.data, rt2.train) != info_a["key"], other
    # ... but what the warm-up never sees does not: the measured rounds, the aggregator
    for same in ("federation.rounds=7", "defenses.aggregator.name='median'"):
        rt2 = _rt("model.warm_start={rounds=3}", same)
        assert warm_start_key(rt2.scenario, rt2.data, rt2.train) == info_a["key"], same


def test_checkpoint_is_loaded_and_a_mismatched_one_is_refused_with_a_clear_message(tmp_path):
    rt = _rt()
    trained = copy.deepcopy(rt.model)
    fedavg_pretrain(trained, rt.data, rt.train, rounds=1, cohort=4, seed=0)
    path = tmp_path / "w.pt"
    torch.save(trained.state_dict(), path)
    rt2 = _rt(f"model.warm_start={{checkpoint='{path}'}}")
    m = copy.deepcopy(rt2.model)
    info = apply_warm_start(m, rt2.scenario, rt2.data, rt2.train)
    assert info["checkpoint"] == str(path)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), trained.parameters()))
    rt3 = _rt(f"model.warm_start={{checkpoint='{path}'}}", "model.params={hidden=[8]}")
    with pytest.raises(ValueError, match="does not fit model"):
        apply_warm_start(copy.deepcopy(rt3.model), rt3.scenario, rt3.data, rt3.train)
    with pytest.raises(ValueError, match="no file"):
        apply_warm_start(
            copy.deepcopy(rt3.model),
            load_scenario(
                "scenarios/quickstart.toml",
                [*SMALL, f"model.warm_start={{checkpoint='{tmp_path / 'missing.pt'}'}}"],
            ),
            rt3.data,
            rt3.train,
        )


@pytest.mark.parametrize("value", ["{}", "{rounds=2, checkpoint='x.pt'}", "{rounds=0}"])
def test_warm_start_needs_exactly_one_valid_source(value):
    with pytest.raises(ScenarioError, match="warm_start"):
        load_scenario("scenarios/quickstart.toml", [*SMALL, f"model.warm_start={value}"])


def test_a_run_starts_from_the_warm_model_and_records_it():
    cold = run(load_scenario("scenarios/quickstart.toml", SMALL), write=False)
    warm = run(
        load_scenario("scenarios/quickstart.toml", [*SMALL, "model.warm_start={rounds=4}"]), write=False
    )
    ws = warm.warm_start
    assert ws["rounds"] == 4 and ws["main_accuracy"] > 0.5
    assert warm.rounds[0].main_accuracy > cold.rounds[0].main_accuracy + 0.1
