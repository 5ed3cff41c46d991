"""Seconds per round for the same local training work, three ways (issue: core simulator).

1. floor   — a plain sequential PyTorch loop: for each sampled client, load the global weights,
             train locally, accumulate the weighted mean; no framework at all, PyTorch's default memory
             format (the "floor, channels-last" row: the same loop in the format privsim picks for a CNN);
2. flower  — plain Flower: a minimal ClientApp + Flower's FedAvg ``strategy.start`` on
             ``run_simulation`` (Ray);
3. privsim — ``simulator.run`` on both engines: inline as configured (auto: vectorised cohort where it
             pays, both CPU cores once the rounds are long enough), inline one client at a time in one
             process (the engine before the vectorised cohort), inline always vectorised, and ray (several
             clients per actor call).

Workloads: ``quickstart`` (the scenario file: CNN, 10 of 20 clients × 2 epochs, compute-bound) and
``mlp500`` (500 clients, 50 per round, MLP 784-32-10, 1 epoch, batch 8: overhead-bound). ``--population``
adds the population-scale rows: the mlp500 recipe with every client holding 10 examples drawn from the pool
(partitioner ``sample``) at 100 and at 10,000 clients, cohort 50.

Every row runs in its own process (so that its peak memory, children included, is its own). Steady-state
seconds per round exclude the first round (Ray start-up, worker start, data loading), reported separately.

    python benchmarks/bench_engines.py --workload mlp500 --rounds 6
    python benchmarks/bench_engines.py --workload quickstart --rounds 5
    python benchmarks/bench_engines.py --population --rounds 6 --skip-ray
    python benchmarks/bench_engines.py --workload mlp500 --rounds 12 --repeat 3   # medians of 3 interleaved
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import random
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from simulator import load_scenario
from simulator.context import make_generator
from simulator.flat import layout_of, load_vector, model_vector
from simulator.flower.runtime import build_runtime
from simulator.runner import run
from simulator.training import evaluate, train_local


def floor(s, rounds: int, channels_last: bool = False) -> list[float]:
    """The plain loop as a user writes it: PyTorch's default (contiguous) memory format, unless
    ``channels_last`` (the "floor, channels-last" row: what the format alone gives a sequential loop)."""
    rt = build_runtime(s)
    train = dataclasses.replace(rt.train, channels_last=channels_last)
    model = copy.deepcopy(rt.model)
    layout = layout_of(model)
    times = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        g = model_vector(model, layout)
        acc, total = torch.zeros_like(g, dtype=torch.float64), 0.0
        work = copy.deepcopy(model)
        for pid in rt.sampler.sample(rnd).sampled:
            load_vector(work, g, layout)
            x, y = rt.data.client(pid)
            train_local(work, x, y, train, generator=make_generator(s.seed, rnd, pid, "train"))
            acc += x.shape[0] * (model_vector(work, layout) - g).double()
            total += x.shape[0]
        load_vector(model, g + (acc / total).float(), layout)
        evaluate(model, rt.data.test.x, rt.data.test.y)
        times.append(time.perf_counter() - t0)
    return times


def flower(s, rounds: int) -> list[float]:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    js = s.model_dump_json(exclude_unset=True)
    client = ClientApp()

    @client.train()
    def _train(msg: Message, context: Context) -> Message:
        from simulator.flower.runtime import runtime_for

        rt = runtime_for(js)
        torch.set_num_threads(1)
        pid = int(context.node_config["partition-id"])
        rt.model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = rt.data.client(pid)
        train_local(rt.model, x, y, rt.train, generator=make_generator(s.seed, pid, "train"))
        return Message(
            RecordDict(
                {
                    "arrays": ArrayRecord(rt.model.state_dict()),
                    "metrics": MetricRecord({"num-examples": int(x.shape[0])}),
                }
            ),
            reply_to=msg,
        )

    stamps: list[float] = []
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        rt = build_runtime(s)
        model = copy.deepcopy(rt.model)
        while len(list(grid.get_node_ids())) < s.data.num_clients:
            time.sleep(0.05)
        n = s.federation.clients_per_round or s.data.num_clients
        strategy = FedAvg(
            fraction_train=n / s.data.num_clients,
            fraction_evaluate=0.0,
            min_train_nodes=n,
            min_available_nodes=s.data.num_clients,
        )

        def ev(rnd: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            acc, _ = evaluate(model, rt.data.test.x, rt.data.test.y)
            stamps.append(time.perf_counter())
            return MetricRecord({"accuracy": acc})

        stamps.append(time.perf_counter())
        strategy.start(
            grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=rounds, evaluate_fn=ev
        )

    random.seed(s.seed)
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=s.data.num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"include_dashboard": False},
        },
    )
    # stamps: before round 1 (after the initial evaluation at round 0), then after every round
    return list(np.diff(stamps[1:]))


def privsim(source: str, sets: list[str], rounds: int, engine: str, *extra: str) -> list[float]:
    s = load_scenario(source, [*sets, f"federation.rounds={rounds}", f"simulation.engine='{engine}'", *extra])
    r = run(s, write=False)
    return [x.seconds for x in r.rounds]


WORKLOADS = {
    "quickstart": [],
    "mlp500": [
        "data.num_clients=500",
        "data.partitioner.name='iid'",
        "data.partitioner.params={}",
        "federation.clients_per_round=50",
        "model.name='mlp'",
        "model.params={hidden=[32]}",
        "federation.local_epochs=1",
        "federation.batch_size=8",
    ],
}


def population(n: int) -> list[str]:
    return [
        *WORKLOADS["mlp500"],
        f"data.num_clients={n}",
        "data.partitioner.name='sample'",
        "data.partitioner.params={size=10}",
    ]


ROWS = {
    "floor": ("floor (sequential PyTorch)", None),
    "floor-channels-last": ("floor, channels-last", None),
    "privsim-inline": ("privsim inline (auto)", ("inline",)),
    "privsim-inline-contiguous": (
        "privsim inline (auto), contiguous format",
        ("inline", "simulation.memory_format='contiguous'"),
    ),
    "privsim-inline-loop": (
        "privsim inline, per client, 1 process",
        ("inline", "simulation.vectorise='off'", "simulation.workers=1"),
    ),
    "privsim-inline-vectorised": ("privsim inline, vectorised", ("inline", "simulation.vectorise='on'")),
    "flower": ("plain Flower FedAvg (ray)", None),
    "privsim-ray": ("privsim ray", ("ray",)),
    "privsim-ray-node-per-client": (
        "privsim ray, one node per client",
        ("ray", "simulation.clients_per_node=1"),
    ),
}


def one_row(scenario: str, sets: list[str], row: str, rounds: int) -> dict:
    """Run one row in this process; its times and this process's (and its children's) peak memory."""
    logging.getLogger("flwr").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    s = load_scenario(scenario, [*sets, f"federation.rounds={rounds}"])
    if row == "floor":
        t = floor(s, rounds)
    elif row == "floor-channels-last":
        t = floor(s, rounds, channels_last=True)
    elif row == "flower":
        t = flower(s, rounds)
    else:
        engine, *extra = ROWS[row][1]  # type: ignore[misc]
        t = privsim(scenario, sets, rounds, engine, *extra)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_kb = max(peak_kb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"times": [float(x) for x in t], "peak_mb": peak_kb / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="scenarios/quickstart.toml")
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="quickstart")
    ap.add_argument("--population", action="store_true", help="the 100 vs 10,000-client rows instead")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--rows", default=None, help="comma-separated row keys (default: all)")
    ap.add_argument(
        "--repeat", type=int, default=1, help="run every row this many times, interleaved; report medians"
    )
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one row, print JSON
    ap.add_argument("--sets", default="[]", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print("ROW " + json.dumps(one_row(a.scenario, json.loads(a.sets), a.one, a.rounds)))
        return
    if a.population:
        plan = [
            (f"{n:,} clients: {ROWS[r][0]}", population(n), r)
            for n in (100, 10_000)
            for r in (a.rows.split(",") if a.rows else ("floor", "privsim-inline", "privsim-inline-loop"))
        ]
    else:
        keys = a.rows.split(",") if a.rows else list(ROWS)
        if a.skip_ray:
            keys = [k for k in keys if k not in ("flower", "privsim-ray")]
        plan = [(ROWS[k][0], WORKLOADS[a.workload], k) for k in keys]
    runs: dict[str, list[tuple[list[float], float]]] = {label: [] for label, _, _ in plan}
    for rep in range(a.repeat):  # interleaved, so that a slow spell of a shared machine hits every row
        for label, sets, key in plan:
            cmd = [sys.executable, __file__, "--scenario", a.scenario, "--rounds", str(a.rounds)]
            cmd += ["--one", key, "--sets", json.dumps(sets)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((x for x in out.stdout.splitlines() if x.startswith("ROW ")), None)
            if line is None:
                print(f"{label}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            res = json.loads(line[4:])
            runs[label].append((res["times"], res["peak_mb"]))
            print(f"done: {label} (run {rep + 1})", file=sys.stderr)
    rows = []
    for label, got in runs.items():
        if not got:
            continue
        steady = [float(np.mean(t[1:])) if len(t) > 1 else float(t[0]) for t, _ in got]
        first = [float(t[0]) for t, _ in got]
        peak = max(m for _, m in got)
        rows.append((label, float(np.median(first)), float(np.median(steady)), peak, steady))
    base = rows[0][2] if rows else 1.0
    print(f"\n{a.repeat} run(s) per row, interleaved; medians (steady = mean of rounds 2..{a.rounds})")
    print(f"{'engine':<48}{'round 1 (s)':>12}{'steady s/round':>16}{'× floor':>9}{'peak MB':>9}  all steady")
    for label, r1, steady, mb, every in rows:
        alls = " ".join(f"{x:.3f}" for x in every)
        print(f"{label:<48}{r1:>12.2f}{steady:>16.3f}{steady / base:>9.2f}{mb:>9.0f}  {alls}")


if __name__ == "__main__":
    main()
