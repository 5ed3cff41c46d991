"""PSNR of Inverting Gradients (Geiping et al., NeurIPS 2020) vs batch size and vs Gaussian noise on the
gradient: photos 32×32, untrained small CNN, FedSGD, same seeds for every cell.

    python benchmarks/leakage_table.py               # ~2-3 min on one CPU core
    python benchmarks/leakage_table.py --iterations 1000 --restarts 2
"""

from __future__ import annotations

import argparse
import time
import tomllib
from pathlib import Path

import torch

from attacks.base import INVERSION_ATTACKS
from simulator.experiment import attack_update, prepare_leakage
from simulator.scenario import scenario_from_dict


def cell(*, batch: int, sigma: float, iterations: int, restarts: int, seed: int) -> dict:
    data = tomllib.loads(Path("scenarios/leakage_ig.toml").read_text())
    data["seed"] = seed
    data["leakage"] = {"num_images": batch, "protocol": "gradient"}  # a seeded draw of `batch` images
    data["attacks"]["inversion"]["params"].update(
        iterations=iterations, restarts=restarts, label_strategy="llg"
    )
    if sigma > 0:
        data["defenses"] = {"client": [{"name": "gaussian_noise", "params": {"sigma": sigma}}]}
    s = scenario_from_dict(data)
    case = prepare_leakage(s)
    attack = INVERSION_ATTACKS.create(s.attacks.inversion.name, s.attacks.inversion.params)
    t0 = time.perf_counter()
    _, m = attack_update(attack, case.view, case.truth_x, case.truth_y)
    return {
        "batch": batch,
        "sigma": sigma,
        "psnr": m["psnr"],
        "ssim": m["ssim"],
        "label_acc": m["label_accuracy"],
        "grad_norm": float(case.view.payload.norm()),
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 1e-3, 1e-2, 1e-1])
    a = ap.parse_args()
    torch.set_num_threads(1)
    kw = {"iterations": a.iterations, "restarts": a.restarts, "seed": a.seed}
    print(
        f"IG, photos 32x32, untrained CNN, FedSGD, {a.iterations} iterations x {a.restarts} restart(s), "
        f"seed {a.seed}, labels by LLG counting\n"
    )
    print("PSNR vs batch size (no defense)")
    print(f"{'batch':>6} {'PSNR dB':>8} {'SSIM':>6} {'label acc':>9} {'seconds':>8}")
    for b in a.batches:
        r = cell(batch=b, sigma=0.0, **kw)
        print(
            f"{b:>6} {r['psnr']:>8.2f} {r['ssim']:>6.3f} {r['label_acc']:>9.2f} {r['seconds']:>8.1f}",
            flush=True,
        )
    print("\nPSNR vs Gaussian noise sigma on the gradient (batch 1)")
    print(f"{'sigma':>8} {'PSNR dB':>8} {'SSIM':>6} {'label acc':>9} {'|g|':>8} {'seconds':>8}")
    for sg in a.sigmas:
        r = cell(batch=1, sigma=sg, **kw)
        print(
            f"{sg:>8.0e} {r['psnr']:>8.2f} {r['ssim']:>6.3f} {r['label_acc']:>9.2f} {r['grad_norm']:>8.3f} "
            f"{r['seconds']:>8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
