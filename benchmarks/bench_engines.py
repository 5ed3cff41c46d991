"""Seconds per round for the same local training work, three ways (issue: core simulator).

1. floor   — a plain sequential PyTorch loop: for each sampled client, load the global weights,
             train locally, accumulate the weighted mean; no framework at all;
2. flower  — plain Flower: a minimal ClientApp + Flower's FedAvg ``strategy.start`` on
             ``run_simulation`` (Ray);
3. privsim — ``simulator.run`` on both engines (inline and ray).

All three use the quickstart's data partitions, model, cohort size, local epochs, batch size and
learning rate. Steady-state seconds per round exclude the first round (Ray start-up, worker data
loading), which is reported separately.

    python benchmarks/bench_engines.py --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import logging
import random
import time

import numpy as np
import torch

from simulator import load_scenario
from simulator.context import make_generator
from simulator.flat import layout_of, load_vector, model_vector
from simulator.flower.runtime import build_runtime
from simulator.runner import run
from simulator.training import evaluate, train_local


def floor(s, rounds: int) -> list[float]:
    rt = build_runtime(s)
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
            train_local(work, x, y, rt.train, generator=make_generator(s.seed, rnd, pid, "train"))
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


def privsim(s, rounds: int, engine: str) -> list[float]:
    s = load_scenario(s.source, [f"federation.rounds={rounds}", f"simulation.engine='{engine}'"])
    r = run(s, write=False)
    return [x.seconds for x in r.rounds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="scenarios/quickstart.toml")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-ray", action="store_true")
    a = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    s = load_scenario(a.scenario, [f"federation.rounds={a.rounds}"])
    rows = [("floor (sequential PyTorch)", floor(s, a.rounds))]
    rows.append(("privsim inline", privsim(s, a.rounds, "inline")))
    if not a.skip_ray:
        rows.append(("plain Flower FedAvg (ray)", flower(s, a.rounds)))
        rows.append(("privsim ray", privsim(s, a.rounds, "ray")))
    base = float(np.mean(rows[0][1][1:]))
    print(f"\n{'engine':<30}{'round 1 (s)':>12}{'steady s/round':>16}{'× floor':>9}")
    for name, t in rows:
        steady = float(np.mean(t[1:])) if len(t) > 1 else float(t[0])
        print(f"{name:<30}{t[0]:>12.2f}{steady:>16.2f}{steady / base:>9.2f}")


if __name__ == "__main__":
    main()
