"""Does a compiled local-training step pay on this machine? (issue: speed) Per shipped model, milliseconds per
local SGD step (momentum 0.9, quickstart's batch of 32 on 28×28 digits) three ways:

* ``eager``: :func:`simulator.training.train_local`'s step as it runs today;
* ``channels_last``: the same eager step with the model and its inputs in the NHWC memory format;
* ``module``: the model wrapped in ``torch.compile`` (forward and backward compiled by Inductor; the
  optimizer and the attack / DP hooks stay eager, so every client path could use it);
* ``whole``: the whole step (zero_grad, loss, backward, ``optimizer.step``) compiled as one function (no
  room for hooks: plain clients only).

Also the one-off compile seconds, the number of steps after which the compiled step has paid for its compile
(``break-even``; ``never`` when it is not faster), and how far its weights are from eager's after the timed
steps (compiled kernels fuse and reorder sums: results are no longer bit-identical to the per-client path).

    python benchmarks/bench_compile.py
    python benchmarks/bench_compile.py --models cnn,lenet --steps 100 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from simulator.models import build_model

SHAPE = (1, 28, 28)
MODELS: dict[str, tuple[str, dict]] = {
    "mlp": ("mlp", {"hidden": [32]}),
    "cnn": ("cnn", {}),
    "lenet": ("lenet", {}),
    "resnet18 (width 16)": ("resnet18", {"width": 16}),
}


Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> Step:
    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def measure(model: nn.Module, batch: int, steps: int) -> dict[str, tuple[float, float, float]]:
    """{variant: (ms per step, compile seconds, max |weight - eager weight| after the steps)}."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *SHAPE, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    out: dict[str, tuple[float, float, float]] = {}
    eager_weights: list[torch.Tensor] = []
    for variant in ("eager", "channels_last", "module", "whole"):
        m = copy.deepcopy(model)
        xv = x
        if variant == "channels_last":
            m = m.to(memory_format=torch.channels_last)
            xv = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        step = _step(torch.compile(m) if variant == "module" else m, opt)
        if variant == "whole":
            step = torch.compile(step)
        t0 = time.perf_counter()
        step(xv, y)  # compiles (the first call), then one warm call
        step(xv, y)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            step(xv, y)
        per = (time.perf_counter() - t0) / steps
        weights = [p.detach().clone() for p in m.parameters()]
        if variant == "eager":
            eager_weights = weights
        if variant in ("eager", "channels_last"):
            comp = 0.0
        else:
            comp = max(0.0, first - 2 * out["eager"][0] / 1e3)
        diff = max(float((a - b).abs().max()) for a, b in zip(weights, eager_weights))
        out[variant] = (per * 1e3, comp, diff)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)
    print(f"batch {a.batch}, {a.steps} timed steps, {a.threads} thread(s), torch {torch.__version__}")
    print(
        f"{'model':>20} {'variant':>13} {'ms/step':>8} {'× eager':>7} {'compile s':>9} {'break-even':>11} "
        f"{'max |Δw|':>9}"
    )
    for name in a.models.split(","):
        kind, params = MODELS[name]
        model = build_model(kind, params, input_shape=SHAPE, num_classes=10, seed=0)
        res = measure(model, a.batch, a.steps)
        base = res["eager"][0]
        for variant, (ms, comp, diff) in res.items():
            gain = base - ms
            even = f"{comp * 1e3 / gain:,.0f} steps" if gain > 0 else "never"
            if variant in ("eager", "channels_last"):
                even = "-"
            print(
                f"{name:>20} {variant:>13} {ms:>8.2f} {ms / base:>7.2f} {comp:>9.1f} {even:>11} {diff:>9.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
