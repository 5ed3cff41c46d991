"""Time one DP-SGD step (forward + backward + clip + noise + update) against a non-private step.

For each Opacus ``grad_sample_mode`` on privsim's small CNN (MNIST shape), batch sizes 32 and 64; prints a
table with the ratio to the non-private step. ``--quick`` takes fewer repetitions (< 2 min on 2 CPU cores).

    python benchmarks/bench_dp.py --quick [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from simulator.models import build_model

MODES = ("hooks", "functorch", "ew", "ghost")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(*, mode: str | None, batch: int, device: str, warmup: int, reps: int) -> float:
    """Median seconds per step; ``mode=None`` is the non-private baseline."""
    model = build_model("cnn", {}, input_shape=(1, 28, 28), num_classes=10, seed=0).to(device)
    x = torch.rand(batch * 4, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch * 4,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    crit = nn.CrossEntropyLoss()
    if mode is not None:
        loader = DataLoader(TensorDataset(x, y), batch_size=batch)
        out = PrivacyEngine(accountant="rdp").make_private(
            module=model,
            optimizer=opt,
            criterion=crit,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            poisson_sampling=False,
            grad_sample_mode=mode,
        )
        if mode == "ghost":
            model, opt, crit, _ = out
        else:
            model, opt, _ = out
    xb, yb = x[:batch], y[:batch]
    times = []
    for i in range(warmup + reps):
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = crit(model(xb), yb)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    warmup, reps = (2, 5) if args.quick else (5, 30)
    print(
        f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"model=cnn(1x28x28, 10 classes) reps={reps}"
    )
    print(f"{'batch':>5} | {'mode':>11} | {'ms/step':>8} | {'× non-private':>13}")
    for batch in (32, 64):
        base = time_steps(mode=None, batch=batch, device=args.device, warmup=warmup, reps=reps)
        print(f"{batch:>5} | {'non-private':>11} | {base * 1e3:8.2f} | {1.0:13.2f}")
        for mode in MODES:
            t = time_steps(mode=mode, batch=batch, device=args.device, warmup=warmup, reps=reps)
            print(f"{batch:>5} | {mode:>11} | {t * 1e3:8.2f} | {t / base:13.2f}")


if __name__ == "__main__":
    main()
