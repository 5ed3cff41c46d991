"""Before round 1: a measured estimate of a round's client training in this process, and a worker's warm-up.

The inline engine's worker pool pays a start-up of several seconds per worker (interpreter, torch, the
scenario's data) and only pays off when rounds are long. Waiting for round 1 to show that a round is long
means round 2 also runs without the pool; measuring a few local-training steps of the scenario's own model
on its own data before round 1 lets the workers warm up while round 1 runs. The measurement is a
heuristic for when to start (the pool still decides on the rounds it sees when it has no estimate); it never
changes a result: it trains a copy of the model, on this process's random state saved and restored.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
from collections.abc import Callable

import torch

from simulator.data.handoff import DataHandoff, adopt
from simulator.flower.runtime import Runtime, runtime_for
from simulator.training import train_local

__all__ = ["round_seconds", "step_seconds", "warm_worker"]

_STEPS = 3  # timed local steps (after as many untimed ones that initialise the kernels)


def step_seconds(rt: Runtime) -> float:
    """Seconds per local-training step (one mini-batch of ``federation.batch_size``) of the scenario's model
    on the first client's data, on ``simulation.torch_threads`` threads: the best of ``_STEPS`` steps
    after ``_STEPS`` untimed ones."""
    s = rt.scenario
    x, y = rt.data.client(0)
    if x.shape[0] == 0:
        return 0.0
    b = rt.train.batch_size
    reps = math.ceil(b / x.shape[0])
    xb, yb = x.repeat(reps, *([1] * (x.dim() - 1)))[:b], y.repeat(reps)[:b]
    xs, ys = xb.repeat(_STEPS, *([1] * (x.dim() - 1))), yb.repeat(_STEPS)
    cfg = dataclasses.replace(rt.train, epochs=1, max_steps=None)
    model = copy.deepcopy(rt.model)
    before = torch.get_num_threads()
    best = math.inf
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(s.simulation.torch_threads)
        try:
            for _ in range(2):  # the first pass initialises the kernels, the second is timed
                t0 = time.perf_counter()
                train_local(model, xs, ys, cfg, generator=torch.Generator().manual_seed(0))
                best = min(best, (time.perf_counter() - t0) / _STEPS)
        finally:
            torch.set_num_threads(before)
    return best


def round_seconds(rt: Runtime) -> float:
    """Estimated seconds of round 1's client training, one client after another in this process: the local
    steps of the clients round 1 samples (epochs × mini-batches, capped by ``max_steps``) × the measured
    seconds per step."""
    steps = 0
    for pid in rt.sampler.sample(1).sampled:
        n = len(rt.data.client_indices[pid])
        k = rt.train.epochs * math.ceil(n / rt.train.batch_size)
        steps += min(k, rt.train.max_steps) if rt.train.max_steps is not None else k
    return steps * step_seconds(rt) if steps else 0.0


def warm_worker(scenario_json: str, data: DataHandoff | None = None) -> Callable[[], float]:
    """A worker's preparation before its first clients: the scenario's runtime (data, model, plug-ins; from
    ``data``, what the starting process already computed, where it can). Returns what the worker runs once
    it has said it is ready: a few training steps, so that its first round does not pay for initialising the
    kernels (1.5-2 s on quickstart's CNN)."""
    if data is not None:
        adopt(data)
    return functools.partial(step_seconds, runtime_for(scenario_json))
