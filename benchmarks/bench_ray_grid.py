"""A 16-cell leaderboard on a local Ray cluster of 1 node vs 2 nodes (issue 21: grids on a Ray cluster).

The grid: 4 aggregators (fedavg, median, trimmed_mean, krum) × 4 attacks (none, sign_flip, label_flip, alie;
20 % attackers acting every round) on an MLP [64] over the 5,000 MNIST digits, 20 clients, 10 per round, 2
local epochs, 10 rounds; inline engine, ``simulation.workers = 1`` (one CPU per cell).

Each row starts a fresh cluster on this machine (:func:`simulator.leaderboard.ray_dispatch.start_local_node`:
nodes at 127.0.0.1, one CPU each, so that 2 nodes are 2 CPUs on a 2-core box), runs
``privsim leaderboard run GRID --ray-address <head> --quiet`` into a fresh store, and stops the cluster.
Wall seconds are the CLI's, start-up and the leaderboard report included; "cell s" sums the cells' own times
from the store (each run's start to finish; it grows when cells compete for cores); "load" is the machine's
load average at the end of a run: on a shared machine other work takes cores from the cluster, and the
comparison means little when the load is above the number of cores. ``--local`` adds a row without Ray
(``--workers 1``).

    python benchmarks/bench_ray_grid.py --repeat 3
    python benchmarks/bench_ray_grid.py --rounds 3 --nodes 1 2 --local
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simulator.leaderboard import load_grid
from simulator.leaderboard.ray_dispatch import LOOPBACK_ENV, LocalNode, start_local_node

ROOT = Path(__file__).resolve().parents[1]
PRIVSIM = [sys.executable, "-c", "from simulator.cli import main; main()"]
PLAN = "attacks.plan={malicious_fraction = 0.2, start_round = 1, every = 1, guarantee_sampled = true}"
ATTACKS = {
    "none": [],
    "sign_flip": [PLAN, 'attacks.poisoning={name = "sign_flip", params = {knowledge = "omniscient"}}'],
    "label_flip": [PLAN, 'attacks.backdoor={name = "label_flip"}'],
    "alie": [PLAN, 'attacks.poisoning={name = "alie", params = {knowledge = "omniscient"}}'],
}
DEFENSES = ["fedavg", "median", "trimmed_mean", "krum"]


def write_grid(folder: Path, rounds: int) -> Path:
    overrides = [
        "simulation.engine='inline'",
        "simulation.workers=1",
        "data.max_examples=5000",
        "data.num_clients=20",
        "federation.clients_per_round=10",
        "federation.local_epochs=2",
        f"federation.rounds={rounds}",
        "model.name='mlp'",
        "model.params={hidden=[64]}",
    ]
    attack = ", ".join(
        f"{{ label = {json.dumps(k)}, set = {json.dumps(v)} }}" if v else f"{{ label = {json.dumps(k)} }}"
        for k, v in ATTACKS.items()
    )
    defense = ", ".join(
        f'{{ label = "{d}", set = [{json.dumps(f"defenses.aggregator.name={d!r}")}] }}' for d in DEFENSES
    )
    path = folder / "ray_bench_grid.toml"
    path.write_text(
        "\n".join(
            [
                'name = "ray_bench_grid"',
                'track = "integrity"',
                f"base = {json.dumps(str(ROOT / 'scenarios' / 'quickstart.toml'))}",
                f"overrides = {json.dumps(overrides)}",
                "[axes]",
                f"attack = [{attack}]",
                f"defense = [{defense}]",
            ]
        )
        + "\n"
    )
    return path


def cell_seconds(store: Path) -> tuple[int, float]:
    """Completed cells in the store and the sum of their times (start to finish of each run: rounds, outputs,
    plots)."""
    con = sqlite3.connect(store)
    try:
        rows = con.execute("SELECT finished_at - started_at FROM runs WHERE status = 'completed'").fetchall()
    finally:
        con.close()
    return len(rows), sum(float(r[0]) for r in rows)


def run_row(grid: Path, folder: Path, nodes: int | None, timeout: float) -> dict[str, float]:
    """One run: a fresh cluster of ``nodes`` nodes (None: no Ray, --workers 1), the grid, the cluster
    stopped."""
    store, out = folder / "store.sqlite", folder / "out"
    cluster: list[LocalNode] = []
    cmd = [*PRIVSIM, "leaderboard", "run", str(grid), "--store", str(store), "--out", str(out), "--quiet"]
    try:
        if nodes is not None:
            t0 = time.perf_counter()
            cluster.append(start_local_node())
            cluster += [start_local_node(head=cluster[0].address) for _ in range(nodes - 1)]
            print(f"  {nodes}-node cluster up in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            cmd += ["--ray-address", cluster[0].address]
        env = {**os.environ, **LOOPBACK_ENV, "PYTHONPATH": str(ROOT)}
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        load = os.getloadavg()[0]  # the last minute: most of the run
    finally:
        for node in reversed(cluster):
            node.stop()
    if p.returncode != 0:
        raise SystemExit(f"the grid failed ({nodes} nodes):\n{p.stderr[-3000:]}")
    done, secs = cell_seconds(store)
    print(f"  {done} cells in {wall:.1f} s (load {load:.1f})", file=sys.stderr)
    return {"cells": done, "wall": wall, "cell_s": secs, "load": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="federated rounds per cell")
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="cluster sizes to time")
    ap.add_argument("--local", action="store_true", help="add a row without Ray (--workers 1)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per row, interleaved (the table: medians)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds one run may take")
    args = ap.parse_args()

    configs: list[int | None] = [*([None] if args.local else []), *args.nodes]
    runs: dict[int | None, list[dict[str, float]]] = {k: [] for k in configs}
    with tempfile.TemporaryDirectory(prefix="privsim-bench-ray-") as tmp:
        grid = write_grid(Path(tmp), args.rounds)
        n = len(load_grid(grid).cells)
        for rep in range(args.repeat):
            for k in configs:  # interleaved, so that a change in the machine's load hits every row
                print(
                    f"{n} cells on {'no Ray' if k is None else f'{k} node(s)'} (run {rep + 1}) ...",
                    file=sys.stderr,
                )
                folder = Path(tmp) / f"run-{k or 'local'}-{rep}"
                folder.mkdir()
                runs[k].append(run_row(grid, folder, k, args.timeout))

    def med(k: int | None, key: str) -> float:
        return statistics.median(r[key] for r in runs[k])

    base = 1 if 1 in runs else configs[0]
    cores = os.cpu_count()
    print(f"\n{n}-cell grid, {args.rounds} rounds per cell, 1 CPU per node, {cores} cores on this machine")
    print(
        f"(medians of {args.repeat} run(s); load: the machine's 1-minute load average at the end of a run, "
        "other work shares the cores)"
    )
    head = ("cells", "nodes", "wall s", "cells/min", "cell s (sum)", "speed-up", "load", "all wall s")
    print("  ".join(f"{h:>{w}}" for h, w in zip(head, (5, 5, 7, 9, 12, 8, 5, 0))))
    for k in configs:
        wall = med(k, "wall")
        cells = int(med(k, "cells"))
        every = " ".join(f"{r['wall']:.1f}" for r in runs[k])
        print(
            f"{cells:>5}  {'local' if k is None else k!s:>5}  {wall:>7.1f}  {60.0 * cells / wall:>9.2f}  "
            f"{med(k, 'cell_s'):>12.1f}  {med(base, 'wall') / wall:>8.2f}  {med(k, 'load'):>5.1f}  {every}"
        )


if __name__ == "__main__":
    main()
