"""The vectorised cohort (issue: speed): ``train_cohort`` against the per-client loop it replaces
(:func:`simulator.training.train_local`, one client at a time), the round core's ``cohort_step`` on a cohort
mixing attackers with benign clients, the auto decision's cache, and whole runs whose per-round numbers do not
depend on how clients are grouped into nodes, whether they are vectorised, or which process plays them."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from attacks.base import CLIENT_ATTACKS
from simulator import load_scenario
from simulator.context import ClientContext
from simulator.flat import flatten, layout_of
from simulator.models import build_model
from simulator.registry import import_plugins
from simulator.round import ClientPlugins
from simulator.round.cohort import ClientJob, CohortReport, cohort_step
from simulator.runner import RunFailed, run
from simulator.training import LocalTrainConfig
from simulator.vectorised import pays_off, train_cohort, why_not_vectorised
from tests.helpers.cohort_reference import client_data, per_client, vectorised

import_plugins()
SHAPE = (1, 12, 12)
RECIPE = LocalTrainConfig(
    epochs=2, batch_size=8, lr=0.05, momentum=0.9, weight_decay=1e-3, label_smoothing=0.1
)


def _data(sizes: tuple[int, ...], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return client_data(sizes, SHAPE, seed)


@pytest.mark.parametrize(
    "name,params,kernels",
    [
        ("mlp", {"hidden": [16]}, "batched"),
        ("cnn", {"channels": [4, 8], "hidden": 16, "pool": "avg"}, "batched"),
        ("cnn", {"channels": [4, 8], "hidden": 16}, "exact"),  # max-pooling: bit-identical below
    ],
)
@pytest.mark.parametrize(
    "cfg",
    [
        RECIPE,
        LocalTrainConfig(epochs=1, batch_size=5, lr=0.1),  # plain SGD, no momentum
        LocalTrainConfig(epochs=3, batch_size=4, lr=0.05, momentum=0.5, max_steps=5),  # the step cap
    ],
)
def test_train_cohort_equals_the_per_client_loop(
    name: str, params: dict, kernels: str, cfg: LocalTrainConfig
) -> None:
    """Clients of 13, 20 and 3 examples: short last batches (padding) and fewer steps (masking) included.
    Batched kernels: within the summation order's rounding; exact kernels: bit-identical weights."""
    model = build_model(name, params, input_shape=SHAPE, num_classes=10, seed=0)
    data = _data((13, 20, 3))
    want = per_client(model, data, cfg)
    got = vectorised(model, data, cfg, kernels)  # type: ignore[arg-type]
    for (wp, ws), (gp, gs) in zip(want, got):
        assert (gs.steps, gs.num_examples) == (ws.steps, ws.num_examples)
        assert gs.loss == pytest.approx(ws.loss, rel=1e-5)
        for n, p in wp.items():  # float summation order only: ~1e-7 relative seen, 1e-5 allowed
            assert torch.allclose(gp[n], p, rtol=1e-5, atol=1e-6), n
            assert kernels == "batched" or torch.equal(gp[n], p), n
    assert [s.steps for _, s in got] != [got[0][1].steps] * 3 or cfg.max_steps  # sizes differ: masking ran


def test_what_cannot_be_vectorised_is_refused_with_the_reason() -> None:
    mlp = build_model("mlp", {"hidden": [8]}, input_shape=SHAPE, num_classes=10, seed=0)
    assert why_not_vectorised(mlp, RECIPE) is None
    assert "adam" in (why_not_vectorised(mlp, LocalTrainConfig(optimizer="adam")) or "")
    assert "mixup" in (why_not_vectorised(mlp, LocalTrainConfig(mixup_alpha=0.2)) or "")
    assert "buffers" in (why_not_vectorised(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(144)), RECIPE) or "")
    assert "dropout" in (why_not_vectorised(nn.Sequential(nn.Flatten(), nn.Dropout(0.1)), RECIPE) or "")
    cnn = build_model("cnn", {"channels": [4], "hidden": 8}, input_shape=SHAPE, num_classes=10, seed=0)
    assert "max-pooling" in (why_not_vectorised(cnn, RECIPE, "batched") or "")
    assert why_not_vectorised(cnn, RECIPE) is None  # auto: exact kernels, which reproduce max-pooling
    with pytest.raises(ValueError, match="adam"):
        train_cohort(mlp, [], LocalTrainConfig(optimizer="adam"))


def test_vectorise_on_for_a_model_it_cannot_reproduce_is_refused_before_round_one() -> None:
    s = load_scenario(
        "scenarios/quickstart.toml",
        [
            "simulation.engine='inline'",
            "simulation.vectorise='on'",
            "simulation.vectorise_kernels='batched'",
            "federation.rounds=1",
            "data.max_examples=1000",
        ],
    )
    with pytest.raises(RunFailed, match=r"simulation\.vectorise.*max-pooling"):
        run(s, write=False)


def _jobs(model: nn.Module, attackers: set[int]) -> list[ClientJob]:
    layout = layout_of(model)
    g = flatten(model.state_dict(), layout)
    attack = CLIENT_ATTACKS.create("badnets", {})
    jobs = []
    for pid, (x, y) in enumerate(_data((16, 9, 16, 11, 16), seed=3)):
        ctx = ClientContext(
            partition_id=pid,
            server_round=1,
            seed=7,
            num_examples=int(x.shape[0]),
            global_vector=g,
            layout=layout,
            train=RECIPE,
            num_clients=5,
            expected_clients_per_round=5.0,
            malicious=pid in attackers,
            state={},
        )
        jobs.append(ClientJob(x, y, ctx, ClientPlugins(attack=attack if pid in attackers else None), {}))
    return jobs


def test_cohort_step_mixing_attackers_and_benign_clients_gives_the_per_client_replies() -> None:
    model = build_model("mlp", {"hidden": [16]}, input_shape=SHAPE, num_classes=10, seed=0)
    before = copy.deepcopy(model.state_dict())
    rep_on, rep_off = CohortReport(), CohortReport()
    on = cohort_step(model, _jobs(model, {1, 3}), vectorise="on", report=rep_on)
    off = cohort_step(model, _jobs(model, {1, 3}), vectorise="off", report=rep_off)
    assert (rep_on.vectorised, rep_on.per_client) == (3, 2)  # the two attackers train on their own path
    assert (rep_off.vectorised, rep_off.per_client) == (0, 5)
    for a, b in zip(on, off):
        assert not isinstance(a, BaseException) and not isinstance(b, BaseException)
        assert a.metrics["partition-id"] == b.metrics["partition-id"]
        assert a.metrics["local-steps"] == b.metrics["local-steps"]
        for k in a.payload:
            assert torch.allclose(torch.as_tensor(a.payload[k]), torch.as_tensor(b.payload[k]), atol=1e-6)
    for k, v in model.state_dict().items():  # the model holds the global weights again
        assert torch.equal(v, before[k])


def test_auto_measures_once_then_reads_its_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRIVSIM_CACHE", str(tmp_path))
    calls = []
    import simulator.vectorised as vec

    def fake(model, x, y, cfg, c, kernels):
        calls.append(c)
        return (0.1, 1.0)  # vectorised 10× faster

    monkeypatch.setattr(vec, "_time_per_client", fake)
    model = build_model("mlp", {"hidden": [8]}, input_shape=SHAPE, num_classes=10, seed=0)
    x = torch.rand(4, *SHAPE)
    assert pays_off(model, x, RECIPE, 50) and pays_off(model, x, RECIPE, 40)
    assert calls == [32]  # one measurement for the bucket of cohorts 17-50
    assert not pays_off(model, x, RECIPE, 3) and calls == [32]  # below MIN_COHORT: never measured
    cache = json.loads((tmp_path / "vectorise.json").read_text())
    assert [v["vectorise"] for v in cache.values()] == [True]


SMALL = [
    "data.max_examples=600",
    "data.num_clients=8",
    "federation.clients_per_round=6",
    "federation.rounds=3",
    "federation.local_epochs=2",
    "federation.batch_size=16",
    "federation.momentum=0.5",
    "federation.lr=0.1",
    "model.name='mlp'",
    "model.params={hidden=[32]}",
    "simulation.engine='inline'",
]


def _curve(*extra: str) -> list[tuple[float | None, float | None]]:
    r = run(load_scenario("scenarios/quickstart.toml", [*SMALL, *extra]), write=False)
    return [(x.main_accuracy, x.main_loss) for x in r.rounds]


ATTACK = ["attacks.backdoor.name='badnets'", "attacks.plan.malicious_ids=[0, 5]"]
PER_CLIENT = ["simulation.vectorise='off'", "simulation.workers=1", "simulation.clients_per_node=1", *ATTACK]


def test_a_run_does_not_depend_on_vectorising_or_grouping() -> None:
    """Per-round accuracy within 1e-4 and loss within 1e-4 relative (the vectorised path changes only the
    summation order), on a cohort with two backdoor attackers among the benign clients; the per-client runs
    are bit-identical whatever the node grouping."""
    base = _curve(*PER_CLIENT)
    grouped = _curve(
        "simulation.vectorise='off'", "simulation.workers=1", "simulation.clients_per_node=3", *ATTACK
    )
    vect = _curve("simulation.vectorise='on'", "simulation.workers=1", *ATTACK)
    assert grouped == base
    for (a, la), (b, lb) in zip(vect, base):
        assert a == pytest.approx(b, abs=1e-4) and la == pytest.approx(lb, rel=1e-4)
    assert _curve("simulation.vectorise='on'", "simulation.workers=1", *ATTACK) == vect  # deterministic


@pytest.mark.slow
def test_a_run_does_not_depend_on_the_worker_processes_playing_the_nodes() -> None:
    """Two inline worker processes (fresh interpreters) playing two nodes of four clients: bit-identical to
    one process playing one client per node."""
    pooled = _curve(
        "simulation.vectorise='off'", "simulation.workers=2", "simulation.clients_per_node=4", *ATTACK
    )
    assert pooled == _curve(*PER_CLIENT)
