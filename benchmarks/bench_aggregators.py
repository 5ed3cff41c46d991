"""Time the robust aggregators on random update matrices ``U ∈ ℝ^{n×d}`` (float32).

Prints one row per (aggregator, n, d, device): the median wall time of ``--repeats`` runs after one
warm-up run (CUDA runs are synchronised). Target: Multi-metrics, Krum and FLAME under 0.5 s for
100 × 11M on an H100.

    python benchmarks/bench_aggregators.py --quick                # small sizes, CPU, < 2 min
    python benchmarks/bench_aggregators.py --device cuda          # n ∈ {10,50,100} × d ∈ {1e5,1e6,1.1e7}
    python benchmarks/bench_aggregators.py --n 100 --d 11000000 --only multi_metrics krum flame
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import defenses  # noqa: F401  (registers the aggregators)
from defenses.base import AGGREGATORS
from simulator.context import RoundContext
from simulator.flat import Layout

FULL_N = (10, 50, 100)
FULL_D = (100_000, 1_000_000, 11_000_000)
QUICK_N = (10, 50)
QUICK_D = (10_000, 100_000)
DEFAULT_ORDER = (
    "multi_metrics",
    "krum",
    "flame",
    "multi_krum",
    "median",
    "trimmed_mean",
    "bulyan",
    "rfa",
    "norm_clipping",
    "foolsgold",
    "rlr",
    "fedavg",
)


def time_one(
    name: str, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext, *, repeats: int
) -> float:
    """Median seconds of ``repeats`` calls (a fresh aggregator each, so FoolsGold starts empty)."""

    def once() -> float:
        agg = AGGREGATORS.create(name, {})
        c = ctx
        if agg.needs_root_update:  # FLTrust: the server's own update (here the round's mean, as in the tests)
            c = dataclasses.replace(ctx, root_update=updates.mean(dim=0))
        if updates.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = agg.aggregate(updates, weights, c)
        float(res.update[0])  # forces completion on any device
        if updates.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    once()  # warm-up
    return statistics.median(once() for _ in range(repeats))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, nargs="*", help="clients per round (default: 10 50 100)")
    ap.add_argument("--d", type=int, nargs="*", help="model dimensions (default: 1e5 1e6 1.1e7)")
    ap.add_argument("--quick", action="store_true", help="small sizes only (n ∈ {10,50}, d ∈ {1e4,1e5})")
    ap.add_argument("--only", nargs="*", help="aggregator names (default: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ns = tuple(args.n or (QUICK_N if args.quick else FULL_N))
    ds = tuple(args.d or (QUICK_D if args.quick else FULL_D))
    names = [x for x in (args.only or DEFAULT_ORDER) if x in AGGREGATORS] + [
        x for x in (args.only or AGGREGATORS.names()) if x not in DEFAULT_ORDER and x in AGGREGATORS
    ]
    device = torch.device(args.device)
    label = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(f"device: {label}; median of {args.repeats} after 1 warm-up; seconds")
    header = f"{'aggregator':<15}" + "".join(f"{f'n={n},d={d:.0e}':>18}" for d in ds for n in ns)
    print(header)
    print("-" * len(header))
    cells: dict[tuple[str, int, int], float] = {}
    for d in ds:
        for n in ns:
            g = torch.Generator(device="cpu").manual_seed(n * 1_000_003 + d)
            updates = (torch.randn(n, d, generator=g) * 0.01).to(device)
            weights = torch.randint(10, 100, (n,), generator=g).to(torch.float32)
            ctx = RoundContext(
                server_round=1,
                seed=0,
                global_vector=torch.zeros(d, device=device),
                layout=Layout(("w",), ((d,),)),
                client_ids=tuple(range(n)),
                num_examples=tuple(int(w) for w in weights),
                num_clients=10 * n,
                expected_clients_per_round=float(n),
            )
            for name in names:
                cells[(name, n, d)] = time_one(name, updates, weights, ctx, repeats=args.repeats)
            del updates
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for name in names:
        print(f"{name:<15}" + "".join(f"{cells[(name, n, d)]:>18.4f}" for d in ds for n in ns))


if __name__ == "__main__":
    main()
