"""The inline engine's worker pool: the round's clients split by work (``balance``), tasks in a worker process
and in this process, failures that stay with their clients, and client state that travels with its client."""

from __future__ import annotations

import functools
import itertools
import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import load_scenario
from simulator.context import make_generator
from simulator.data import partition_indices
from simulator.flower.client_app import balance
from simulator.flower.inline import ClientPool
from simulator.flower.runtime import build_runtime, evaluation_threads
from simulator.runner import run
from simulator.training import evaluate, train_local


def _makespan(weights: list[float], groups: list[list[int]]) -> float:
    return max(sum(weights[i] for i in g) for g in groups)


def _best_makespan(weights: list[float], parts: int) -> float:
    """Brute force over every assignment of items to groups."""
    return min(
        max(sum(w for w, a in zip(weights, assign) if a == g) for g in range(parts))
        for assign in itertools.product(range(parts), repeat=len(weights))
    )


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    weights=st.lists(st.integers(1, 60), min_size=1, max_size=8),
    parts=st.integers(1, 3),
)
def test_balance_is_within_grahams_bound_of_the_best_split(weights: list[int], parts: int) -> None:
    """Longest processing time first is within (4/3 - 1/(3m)) of the best makespan (Graham 1969); checked
    against a brute-force search over every assignment."""
    w = [float(x) for x in weights]
    groups = balance(w, parts)
    assert sorted(i for g in groups for i in g) == list(range(len(w)))  # every client exactly once
    assert len(groups) <= parts and all(groups)
    m = min(parts, len(w))
    assert _makespan(w, groups) <= (4 / 3 - 1 / (3 * m)) * _best_makespan(w, m) + 1e-9
    assert balance(w, parts) == groups  # deterministic


def test_ten_quickstart_sized_clients_split_evenly() -> None:
    """Ten clients of equal work on two players: five each (fixed node groups gave 6.2 of 10 to the heavier
    node on average over the quickstart's samples)."""
    groups = balance([100.0] * 10, 2)
    assert sorted(len(g) for g in groups) == [5, 5]


def _pool() -> ClientPool:
    return ClientPool(2, auto=False)


def test_pool_tasks_run_in_a_worker_and_here_and_failures_stay_with_their_task() -> None:
    """Two players: one worker process and this process. A task that raises, or a worker that dies, fails
    that task only; the next call starts a new worker."""
    pool = _pool()
    try:
        tasks = [functools.partial(sum, [1, 2]), functools.partial(int, "x"), functools.partial(sum, [4])]
        out = pool.map(tasks, [3.0, 2.0, 1.0])
        assert out[0] == 3 and out[2] == 4
        assert isinstance(out[1], Exception) and "invalid literal" in str(out[1])
        (worker,) = pool._procs
        pids = pool.map([functools.partial(os.getpid)] * 6, [1.0] * 6)
        assert set(pids) <= {os.getpid(), worker.proc.pid}
        died = worker.call(functools.partial(os._exit, 3))  # only ever run in the worker
        assert isinstance(died, RuntimeError)
        assert pool.map([functools.partial(sum, [5]), functools.partial(sum, [6])], [1.0, 1.0]) == [5, 6]
        assert pool._procs[0] is not worker and pool._procs[0].proc.poll() is None
    finally:
        pool.close()


SMALL = [
    "data.num_clients=8",
    "federation.clients_per_round=6",
    "federation.rounds=3",
    "federation.local_epochs=1",
    "federation.batch_size=16",
    "model.name='mlp'",
    "model.params={hidden=[16]}",
    "simulation.engine='inline'",
    "simulation.vectorise='off'",
    "simulation.clients_per_node=4",
    "compression.name='ef'",
    "compression.params={k=50}",
]


def _curve(*extra: str) -> list[tuple[float | None, float | None, list[int]]]:
    r = run(load_scenario("scenarios/quickstart.toml", [*SMALL, *extra]), write=False)
    return [(x.main_accuracy, x.main_loss, x.accepted) for x in r.rounds]


def test_client_state_travels_with_its_client_through_the_pool() -> None:
    """Error feedback keeps each client's residual in its node's Context: two players (a worker process and
    this one, clients split by work, not by node) give bit-identical rounds to one process."""
    assert _curve("simulation.workers=2") == _curve("simulation.workers=1")


@pytest.mark.parametrize("model", ["mlp", "cnn", "lenet"])
def test_server_evaluation_gives_the_same_values_on_one_or_two_threads(model: str) -> None:
    """The server evaluates on the cores the clients leave idle (``evaluation_threads``); for the shipped
    models on MNIST-shaped data the values must not depend on it (else a run's metrics would depend on
    ``simulation.workers``)."""
    s = load_scenario("scenarios/quickstart.toml", [f"model.name='{model}'", "simulation.engine='inline'"])
    rt = build_runtime(s)
    x, y = rt.data.client(0)
    train_local(rt.model, x, y, rt.train, generator=make_generator(0, 1, 0, "train"))
    got = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            got.append(evaluate(rt.model, rt.data.test.x, rt.data.test.y, s.evaluation.batch_size))
    finally:
        torch.set_num_threads(before)
    assert got[0] == got[1]
    assert evaluation_threads(s) == min(os.cpu_count() or 1, 20)
    one = load_scenario("scenarios/quickstart.toml", ["simulation.engine='inline'", "simulation.workers=1"])
    assert evaluation_threads(one) == 1


def test_a_worker_adopts_the_partitions_and_files_this_process_computed(monkeypatch) -> None:
    """The handed-over partitions are the ones flwr-datasets computes, and a process that adopted them does
    not compute them again (the partitioner is never built)."""
    from simulator.data import handoff, partition

    labels = np.random.default_rng(3).integers(0, 10, 600)
    fresh = list(partition_indices(labels, "dirichlet", {"alpha": 0.3}, 7, 11))
    given_over = pickle.loads(pickle.dumps(handoff.handoff()))
    monkeypatch.setattr(partition, "_UPFRONT", partition.OrderedDict())
    handoff.adopt(given_over)

    def refuse(*a, **k):
        raise AssertionError("the partitioner must not run again")

    monkeypatch.setattr(partition.PARTITIONERS, "create", refuse)
    adopted = list(partition_indices(labels, "dirichlet", {"alpha": 0.3}, 7, 11))
    assert len(adopted) == 7 and all(np.array_equal(a, b) for a, b in zip(adopted, fresh))
    with pytest.raises(AssertionError, match="must not run again"):  # other inputs are computed, not reused
        partition_indices(labels, "dirichlet", {"alpha": 0.3}, 7, 12)


def test_a_run_sized_to_its_share_of_the_cpus(monkeypatch) -> None:
    """``PRIVSIM_CPUS`` (a leaderboard cell's share, or its Ray task's CPUs) caps the automatic worker and
    evaluation-thread counts; an explicit ``simulation.workers`` still wins; a bad value means the machine."""
    from simulator.flower.runtime import CPUS_ENV, available_cpus, inline_workers
    from simulator.leaderboard.runner import share_cpus

    s = load_scenario("scenarios/quickstart.toml", ["simulation.engine='inline'"])
    monkeypatch.setenv(CPUS_ENV, "1")
    assert (available_cpus(), inline_workers(s), evaluation_threads(s)) == (1, 1, 1)
    two = load_scenario("scenarios/quickstart.toml", ["simulation.engine='inline'", "simulation.workers=2"])
    assert inline_workers(two) == 2 and evaluation_threads(two) == 1  # never more threads than its cores
    monkeypatch.setenv(CPUS_ENV, "zero")
    assert available_cpus() == (os.cpu_count() or 1)
    monkeypatch.delenv(CPUS_ENV)
    share_cpus(3)
    assert os.environ[CPUS_ENV] == "3" and available_cpus() == 3
    monkeypatch.delenv(CPUS_ENV)
