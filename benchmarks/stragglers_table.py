"""Accuracy vs round deadline: ``scenarios/stragglers.toml`` with no deadline, a generous one, the median
client's time and a tight one.

The deadlines are quantiles of the clients' own simulated times (no jitter: each client's median time),
computed from the scenario's latency model, each client's local steps (epochs × ⌈examples / batch⌉, capped
by ``local_steps``), the dense model downloaded (4·d bytes) and the compressor's payload uploaded. Each row is
one run: final main accuracy, mean clients on time (aggregated) per round, late clients per round, simulated
seconds per round (the deadline when the server waited for it), wall seconds per round and in all.

    python benchmarks/stragglers_table.py [--scenario scenarios/stragglers.toml] [--rounds 10]
        [--quantiles 0.9 0.5 0.25] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import tomllib
from pathlib import Path

import numpy as np

from simulator import load_scenario
from simulator.flower.runtime import build_runtime
from simulator.latency import LatencyModel
from simulator.runner import run
from simulator.scenario import Scenario, apply_overrides, scenario_from_dict
from simulator.sketching.comm import payload_bytes


def client_times(s: Scenario) -> dict[int, float]:
    """Every client's simulated time in a round at its median speed (see the module docstring)."""
    rt = build_runtime(s)
    model = LatencyModel.for_federation(s.federation, s.seed)
    if model is None:
        raise SystemExit(f"{s.source}: no [federation.latency]; nothing to time")
    f = s.federation
    up, down = payload_bytes(rt.compressor.spec(rt.layout, 1)), 4 * rt.layout.dim
    out = {}
    for p, ix in enumerate(rt.data.client_indices):
        steps = f.local_epochs * math.ceil(len(ix) / f.batch_size)
        if f.local_steps is not None:
            steps = min(steps, f.local_steps)
        out[p] = model.speed(p).seconds(steps=steps, bytes_up=up, bytes_down=down)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="scenarios/stragglers.toml")
    ap.add_argument("--rounds", type=int, default=None, help="override federation.rounds")
    ap.add_argument(
        "--quantiles",
        type=float,
        nargs="+",
        default=[0.9, 0.5, 0.25],
        help="deadlines as quantiles of the clients' median times (besides no deadline)",
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="key=value, for every run")
    args = ap.parse_args()
    base = [*args.overrides, *([f"federation.rounds={args.rounds}"] if args.rounds else [])]
    s = load_scenario(args.scenario, base)
    times = client_times(s)
    t = np.array(sorted(times.values()))
    print(
        f"{s.name}: {len(t)} clients, simulated time per round at median speed: min {t.min():.2f} s, "
        f"median {np.median(t):.2f} s, max {t.max():.2f} s"
    )
    labels = {0.9: "generous", 0.5: "median", 0.25: "tight"}
    rows: list[tuple[str, float | None]] = [("none", None)]
    rows += [(f"{labels.get(q, 'q')} (q{q:g})", float(np.quantile(t, q))) for q in args.quantiles]
    print(
        f"{'deadline':>16} {'s':>6} {'final acc':>9} {'on time/rnd':>11} {'late/rnd':>8} "
        f"{'sim s/rnd':>9} {'sim s':>7} {'wall s/rnd':>10} {'wall s':>7}",
        flush=True,
    )
    for label, deadline in rows:
        if deadline is None:
            scen = _without_deadline(args.scenario, base)
        else:
            scen = load_scenario(args.scenario, [*base, f"federation.deadline_s={deadline}"])
        t0 = time.perf_counter()
        r = run(scen, write=False)
        wall = time.perf_counter() - t0
        n = len(r.rounds)
        sim = [x.simulated_seconds or 0.0 for x in r.rounds]
        print(
            f"{label:>16} {'-' if deadline is None else f'{deadline:.2f}':>6} "
            f"{r.final['main_accuracy']:>9.4f} "
            f"{statistics.mean(x.clients_aggregated for x in r.rounds):>11.2f} "
            f"{statistics.mean(len(x.late) for x in r.rounds):>8.2f} "
            f"{sum(sim) / n:>9.2f} {sum(sim):>7.1f} "
            f"{statistics.mean(x.seconds for x in r.rounds):>10.2f} {wall:>7.1f}",
            flush=True,
        )


def _without_deadline(path: str, overrides: list[str]) -> Scenario:
    """The scenario without ``federation.deadline_s`` (TOML has no null to --set it to); the latency model
    stays, so simulated time is still measured."""
    data = apply_overrides(tomllib.loads(Path(path).read_text()), overrides, source=path)
    data.get("federation", {}).pop("deadline_s", None)
    return scenario_from_dict(data, source=path)


if __name__ == "__main__":
    main()
