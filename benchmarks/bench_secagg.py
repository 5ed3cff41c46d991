"""Seconds per round of plain FedAvg, simulated SecAgg+ and Flower's own SecAgg+ (issue: secure aggregation).

The same inline run three ways: no ``[secure_aggregation]``; ``mode = "simulated"`` (SecAgg+'s encoding, no
cryptography); ``mode = "secaggplus"`` (Flower's SecAggPlusWorkflow + secaggplus_mod each round). The model is
an MLP whose hidden width sets the parameter count, so the cost can be read at 100k and 1M parameters. Steady
seconds per round exclude round 1. Also prints the secure stage alone (``simulate`` vs ``run_secaggplus`` on
random updates of the same size), which is what secure aggregation adds to a round.

    python benchmarks/bench_secagg.py --rounds 4 --clients 10
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from simulator import load_scenario
from simulator.flower.secaggplus import run_secaggplus
from simulator.runner import run
from simulator.secagg import SecAggParams, simulate


def _steady(rounds: list) -> float:
    secs = [r.seconds for r in rounds[1:]] or [r.seconds for r in rounds]
    return statistics.median(secs)


def _stage(n: int, d: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(n, d, generator=g) * 0.01
    counts = [50] * n
    params = SecAggParams(max_weight=50.0)
    t0 = time.perf_counter()
    simulate(u, counts, params, generator=g)
    t1 = time.perf_counter()
    run_secaggplus(u, counts, params=params, num_shares=3, reconstruction_threshold=2, seed=0)
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--clients", type=int, default=10, help="clients per round")
    ap.add_argument(
        "--hidden", type=int, nargs="*", default=[128, 1270], help="MLP widths: 128 ≈ 100k, 1270 ≈ 1M"
    )
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    print(
        "| params | plain s/round | simulated s/round (×) | secaggplus s/round (×) | stage: simulate s | "
        "stage: Flower SecAgg+ s |"
    )
    print("|---|---|---|---|---|---|")
    for h in args.hidden:
        base = [
            "simulation.engine='inline'",
            f"federation.rounds={args.rounds}",
            "federation.local_epochs=1",
            f"federation.clients_per_round={args.clients}",
            "model.name='mlp'",
            f"model.params={{hidden=[{h}]}}",
        ]
        out = {}
        for label, extra in (
            ("plain", []),
            ("simulated", ["secure_aggregation={}"]),
            ("secaggplus", ["secure_aggregation={mode='secaggplus', num_shares=3}"]),
        ):
            r = run(load_scenario("scenarios/quickstart.toml", [*base, *extra]), write=False)
            out[label] = _steady(r.rounds)
        d = 784 * h + h + h * 10 + 10
        sim_s, flwr_s = _stage(args.clients, d)
        p = out["plain"]
        print(
            f"| {d:,} | {p:.2f} | {out['simulated']:.2f} ({out['simulated'] / p:.2f}×) | "
            f"{out['secaggplus']:.2f} ({out['secaggplus'] / p:.2f}×) | {sim_s:.3f} | {flwr_s:.2f} |"
        )


if __name__ == "__main__":
    main()
