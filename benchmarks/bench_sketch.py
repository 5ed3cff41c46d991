"""Seconds to sketch and de-sketch one update, per operator and model size, against one local training step.

For d ∈ {1e5, 1e6, 1.1e7 (ResNet-18)} and each operator (dense Gaussian, SRHT, CountSketch; s = d/100 by
default) the table shows the time to build the round's operator from its seed (what every client and the
server redo each round), one sketch (client), one de-sketch (server, per client), and the ratio of sketch +
de-sketch to one local SGD step of the small CNN on a batch of 32
(``simulator.models.build_model("cnn", …)``). The dense Gaussian R is regenerated chunk by chunk inside every
sketch and de-sketch (so its build column is ~0); it costs O(s·d) and is skipped where s·d exceeds a budget
(the table says so). CountSketch keeps its hashes when rows·d ≤ 2^24, else recomputes them in every call.

Sketch framework: Song, Wang, Yu, Zhang, ICML 2023; CountSketch as in FetchSGD (Rothchild et al., ICML 2020).

    python benchmarks/bench_sketch.py --quick            # < 2 min on 2 CPU cores
    python benchmarks/bench_sketch.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from simulator.models import build_model
from simulator.sketching.operators import SRHT, CountSketch, GaussianSketch, SketchOperator


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], *, reps: int, device: torch.device, warmup: int = 1) -> float:
    """Median seconds of ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_step_seconds(device: torch.device, *, reps: int) -> float:
    """One SGD step (forward, backward, update) of the CNN on a batch of 32 MNIST-sized images."""
    model = build_model("cnn", {}, input_shape=(1, 28, 28), num_classes=10, seed=0).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (32,), generator=g).to(device)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return timeit(step, reps=reps, device=device, warmup=3)


def build(kind: str, d: int, ratio: float, seed: int) -> SketchOperator:
    s = max(1, int(ratio * d))
    if kind == "gaussian":
        return GaussianSketch(d, seed, sketch_dim=s)
    if kind == "srht":
        return SRHT(d, seed, sketch_dim=s)
    return CountSketch(d, seed, rows=5, cols=max(1, s // 5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="one repetition for d ≥ 1e6, smaller Gaussian budget"
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0")
    ap.add_argument("--ratio", type=float, default=0.01, help="s/d")
    ap.add_argument("--dims", type=str, default="100000,1000000,11000000")
    ap.add_argument(
        "--gaussian-budget",
        type=float,
        default=None,
        help="largest s·d for the dense Gaussian (default 2e8 quick, 2e9 full)",
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    budget = args.gaussian_budget or (2e8 if args.quick else 2e9)
    dims = [int(float(v)) for v in args.dims.split(",")]

    t_train = train_step_seconds(device, reps=5 if args.quick else 20)
    print(f"device {device}, torch threads {torch.get_num_threads()}, s/d = {args.ratio}")
    print(f"one CNN training step (batch 32): {t_train * 1e3:.1f} ms\n")
    head = (
        f"{'d':>10} {'operator':>12} {'s':>8} {'build ms':>10} {'sketch ms':>10} {'desketch ms':>12} "
        f"{'(sk+desk)/step':>15}"
    )
    print(head)
    print("-" * len(head))
    for d in dims:
        reps = 1 if (args.quick and d >= 1_000_000) else 3
        x = torch.randn(d, generator=torch.Generator().manual_seed(1)).to(device)
        for kind in ("gaussian", "srht", "count_sketch"):
            s = max(1, int(args.ratio * d))
            if kind == "gaussian" and s * d > budget:
                print(
                    f"{d:>10} {kind:>12} {s:>8}   skipped: dense Gaussian costs O(s·d) = "
                    f"{s * d:.1e} > {budget:.0e}"
                )
                continue
            t0 = time.perf_counter()
            op = build(kind, d, args.ratio, seed=0)
            if kind == "srht":
                assert isinstance(op, SRHT)
                op.signs(), op.rows()  # drawn lazily: count them in the build
            t_build = time.perf_counter() - t0
            y = op.sketch(x)
            t_sk = timeit(lambda op=op, x=x: op.sketch(x), reps=reps, device=device, warmup=0)
            t_de = timeit(lambda op=op, y=y: op.desketch(y), reps=reps, device=device, warmup=0)
            print(
                f"{d:>10} {kind:>12} {op.sketch_dim:>8} {t_build * 1e3:>10.1f} {t_sk * 1e3:>10.1f} "
                f"{t_de * 1e3:>12.1f} {(t_sk + t_de) / t_train:>15.1f}"
            )


if __name__ == "__main__":
    main()
