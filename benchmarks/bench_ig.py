"""Iterations per second of the Inverting Gradients step (Geiping et al., NeurIPS 2020) on a CIFAR-style
ResNet-18 (32×32×3, 10 classes, untrained), batch 1 and 8.

Variants: ``eager`` (one restart), ``loop`` and ``vmap`` (R restarts, looped vs batched as one tensor
with ``torch.func.vmap``) and, on CUDA only, ``compiled`` (``torch.compile(mode="reduce-overhead")``,
which captures the step in a CUDA graph).

    python benchmarks/bench_ig.py --quick          # CPU: a few iterations only
    python benchmarks/bench_ig.py --device cuda    # GPU: 50 timed iterations after warm-up
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from attacks.base import ProtocolInfo, ServerView
from attacks.inversion._common import PayloadSimulator
from simulator.flat import flatten, layout_of
from simulator.models import build_model


def make_view(batch: int, device: str) -> ServerView:
    model = build_model("resnet18", {}, input_shape=(3, 32, 32), num_classes=10, seed=0).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=g).to(device)
    y = torch.arange(batch).remainder(10).to(device)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    state.update(zip(params, grads))
    return ServerView(model=model, payload=flatten(state, layout_of(model)),
                      protocol=ProtocolInfo(kind="gradient", num_examples=batch, batch_size=batch),
                      input_shape=(3, 32, 32), num_classes=10)


def time_steps(step, x: torch.Tensor, labels: torch.Tensor, *, warmup: int, iters: int, device: str) -> float:
    """Iterations / s of ``x ← clamp(x − 0.1·sign(step(x)))`` (the signed-gradient box step)."""
    def one(x: torch.Tensor) -> torch.Tensor:
        gx = step(x, labels)
        return (x - 0.1 * gx.sign()).clamp(0, 1)

    for _ in range(warmup):
        x = one(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        x = one(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return iters / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="a few iterations (CPU)")
    ap.add_argument("--restarts", type=int, default=4)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    a = ap.parse_args()
    warmup, iters = (1, 3) if a.quick else (10, 50)
    dev = a.device
    print(f"device {dev} ({torch.cuda.get_device_name() if dev.startswith('cuda') else 'cpu'}), torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}, {iters} timed iterations")
    print(f"{'batch':>5} {'variant':>26} {'it/s':>8} {'image-restarts it/s':>20}")
    for b in a.batches:
        view = make_view(b, dev)
        sim = PayloadSimulator(view)
        f = grad(lambda x, y: sim.objective(distance="cosine", tv=0.2)(x, y)[0])
        labels = torch.arange(b, device=dev).remainder(10)
        x1 = torch.rand(b, 3, 32, 32, device=dev)
        r = a.restarts
        xr = torch.rand(r, b, 3, 32, 32, device=dev)
        rows = [("eager, 1 restart", f, x1, 1)]
        rows.append((f"loop, {r} restarts", lambda x, y: torch.stack([f(x[i], y) for i in range(r)]), xr, r))
        rows.append((f"vmap, {r} restarts batched", vmap(f, in_dims=(0, None)), xr, r))
        if dev.startswith("cuda"):
            rows.append(("compiled (CUDA graph), 1", torch.compile(f, mode="reduce-overhead"), x1, 1))
        for name, step, x0, nr in rows:
            try:
                ips = time_steps(step, x0.clone(), labels, warmup=warmup, iters=iters, device=dev)
                print(f"{b:>5} {name:>26} {ips:>8.2f} {ips * nr:>20.2f}", flush=True)
            except Exception as e:  # a variant the backend cannot run is reported, not hidden
                print(f"{b:>5} {name:>26}   failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}", flush=True)


if __name__ == "__main__":
    main()
