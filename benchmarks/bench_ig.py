"""Speed of the Inverting Gradients attack (Geiping et al., NeurIPS 2020) on a CIFAR-style ResNet-18
(BatchNorm, 3×32×32, 10 classes, untrained; ``--model cnn`` for the small CNN), batch 1 and 8, with its PSNR.

Every row runs the registered ``inverting_gradients`` attack end to end on the leakage experiment's
real 32×32 photo crops (``scenarios/leakage_ig.toml`` with the model swapped), so the numbers are the
product's, not a hand-written loop's:

* ``eager``: one restart, no compilation;
* ``loop R`` / ``vmap R``: R restarts looped, or batched as one tensor with ``torch.func.vmap``;
* ``compiled`` / ``compiled vmap R``: the step captured by ``torch.compile`` — on CUDA with
  ``mode="reduce-overhead"``, i.e. replayed as a CUDA graph.

``it/s`` counts optimisation steps per second of the attack's loop (the one-off compile is reported apart);
``img·restart it/s`` multiplies by the restarts. PSNR / SSIM are the best restart's after the run, so a
compiled row must match its eager row ("unchanged PSNR"; sign steps make tiny float differences visible,
so the two agree to about a dB rather than bit for bit).

    python benchmarks/bench_ig.py --quick                    # CPU: a few iterations, eager rows only
    python benchmarks/bench_ig.py --device cuda              # GPU: 1000 iterations per row
    python benchmarks/bench_ig.py --device cpu --compile --model cnn --batches 1 --iterations 300
                                                             # CPU, compiled rows too: PSNR eager vs compiled
"""

from __future__ import annotations

import argparse

import torch

from attacks.base import INVERSION_ATTACKS
from simulator.experiment import attack_update, prepare_leakage
from simulator.experiment.leakage import view_on_device
from simulator.scenario import load_scenario


def case_for(batch: int, device: str, model: str, norm: str):  # type: ignore[no-untyped-def]
    """The leakage case (built on the CPU as always) with its ServerView moved to ``device``."""
    params = f'model.params={{norm="{norm}"}}' if model == "resnet18" else "model.params={}"
    s = load_scenario(
        "scenarios/leakage_ig.toml",
        [
            f'model.name="{model}"',
            params,
            f"leakage.images={list(range(5, 5 + batch))}",
            f'simulation.device="{device}"',
        ],
    )
    attack = INVERSION_ATTACKS.create("inverting_gradients", {"iterations": 1})
    case = prepare_leakage(s, attack)
    return s, case, view_on_device(s, case.view, attack)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="3 iterations a row (a CPU smoke run)")
    ap.add_argument("--iterations", type=int, default=None, help="per row (default 1000; --quick: 3)")
    ap.add_argument("--restarts", type=int, default=4)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument(
        "--model",
        choices=["resnet18", "cnn", "lenet"],
        default="resnet18",
        help="cnn: leakage_ig's small CNN, where IG reaches ~23 dB in a few hundred steps",
    )
    ap.add_argument("--norm", choices=["batch", "group"], default="batch", help="ResNet-18's normalisation")
    ap.add_argument(
        "--compile", action="store_true", help="compiled rows on the CPU too (default: CUDA only)"
    )
    ap.add_argument("--backend", default="inductor", choices=["inductor", "cudagraphs", "aot_eager"])
    a = ap.parse_args()
    iters = a.iterations or (3 if a.quick else 1000)
    dev = a.device
    with_compile = dev.startswith("cuda") or a.compile
    print(
        f"device {dev} ({torch.cuda.get_device_name() if dev.startswith('cuda') else 'cpu'}), torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}, {a.model}"
        f"{f' ({a.norm} norm)' if a.model == 'resnet18' else ''}, {iters} iterations "
        f"a row, label strategy idlg/llg, TV 0.2, cosine"
    )
    head = (
        f"{'batch':>5} {'variant':>18} {'it/s':>8} {'img·restart it/s':>17} {'compile s':>9} "
        f"{'PSNR':>6} {'SSIM':>5}"
    )
    print(head)
    r = a.restarts
    rows = [("eager", 1, "loop", "off"), (f"loop {r}", r, "loop", "off"), (f"vmap {r}", r, "vmap", "off")]
    if with_compile:
        rows += [("compiled", 1, "loop", "on"), (f"compiled vmap {r}", r, "vmap", "on")]
    for b in a.batches:
        _, case, view = case_for(b, dev, a.model, a.norm)
        for name, restarts, batched, comp in rows:
            params = {
                "iterations": iters,
                "restarts": restarts,
                "batched_restarts": batched,
                "compile_step": comp,
                "compile_backend": a.backend,
                "label_strategy": "idlg" if b == 1 else "llg",
            }
            try:
                recon, m = attack_update(
                    INVERSION_ATTACKS.create("inverting_gradients", params), view, case.truth_x, case.truth_y
                )
            except Exception as e:
                print(
                    f"{b:>5} {name:>18}   failed: {type(e).__name__}: {str(e).splitlines()[0][:90]}",
                    flush=True,
                )
                continue
            info = recon.info
            ips = info["iterations_per_second"]
            print(
                f"{b:>5} {name:>18} {ips:>8.2f} {ips * restarts:>17.2f} {info['compile_seconds']:>9.1f} "
                f"{m['psnr']:>6.2f} {m['ssim']:>5.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
