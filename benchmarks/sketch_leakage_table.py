"""PSNR of gradient inversion through a sketch (Song, Wang, Yu & Zhang, ICML 2023) vs the sketch ratio s/d
and vs Gaussian noise on the sketch, next to unsketched Inverting Gradients (Geiping et al., NeurIPS 2020).

Two server attacks on the same payload (photos 32×32, untrained LeNet (15,826 parameters), FedSGD, batch 1,
same seeds):

* ``naive``: IG on the de-sketched update Rᵀ·y (what a server that just de-sketches would invert);
* ``sketch``: IG matching R·∇L(x̂) to the received sketch y with the round's shared R
  (``sketch_inverting_gradients``).

    python benchmarks/sketch_leakage_table.py                      # ~15 min on 2 CPU cores
    python benchmarks/sketch_leakage_table.py --operator count_sketch --ratios 0.25 0.0625
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


def cell(
    *,
    operator: str,
    ratio: float | None,
    noise: float,
    clip: float,
    attack: str,
    iterations: int,
    restarts: int,
    seed: int,
) -> dict:
    data = tomllib.loads(Path("scenarios/leakage_sketch.toml").read_text())
    data["seed"] = seed
    inv = data["attacks"]["inversion"]
    inv["name"] = attack
    inv["params"].update(iterations=iterations, restarts=restarts)
    if ratio is None:
        data["compression"] = {"name": "none"}
    else:
        params: dict = {"ratio": ratio}
        if noise > 0:
            params.update(clip_norm=clip, noise_multiplier=noise)
        data["compression"] = {"name": operator, "params": params}
    s = scenario_from_dict(data)
    atk = INVERSION_ATTACKS.create(s.attacks.inversion.name, s.attacks.inversion.params)
    case = prepare_leakage(s, atk)
    t0 = time.perf_counter()
    _, m = attack_update(atk, case.view, case.truth_x, case.truth_y)
    return {
        "psnr": m["psnr"],
        "ssim": m["ssim"],
        "label_acc": m["label_accuracy"],
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--operator", default="srht", choices=["srht", "count_sketch", "gaussian_sketch"])
    ap.add_argument("--ratios", type=float, nargs="*", default=[1.0, 0.25, 0.0625, 0.015625])
    ap.add_argument("--noise-ratio", type=float, default=0.25)
    ap.add_argument("--noises", type=float, nargs="*", default=[0.0001, 0.001, 0.01, 0.1])
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    kw = {
        "operator": a.operator,
        "clip": a.clip,
        "iterations": a.iterations,
        "restarts": a.restarts,
        "seed": a.seed,
    }
    print(
        f"photos 32x32, untrained LeNet, FedSGD, batch 1, {a.operator}, IG {a.iterations} it x {a.restarts} "
        f"restarts, seed {a.seed}\n"
    )
    print(
        "| s/d | noise z | naive IG on Rᵀy: PSNR / SSIM | sketch-space IG: PSNR / SSIM "
        "| label acc (naive, sketch) |"
    )
    print("|---|---|---|---|---|")
    base = cell(ratio=None, noise=0.0, attack="inverting_gradients", **kw)
    print(
        f"| unsketched | 0 | {base['psnr']:.2f} / {base['ssim']:.3f} | — | {base['label_acc']:.2f} |",
        flush=True,
    )
    rows = [(r, 0.0) for r in a.ratios] + [(a.noise_ratio, z) for z in a.noises]
    for ratio, z in rows:
        nv = cell(ratio=ratio, noise=z, attack="inverting_gradients", **kw)
        sk = cell(ratio=ratio, noise=z, attack="sketch_inverting_gradients", **kw)
        print(
            f"| {ratio:g} | {z:g} | {nv['psnr']:.2f} / {nv['ssim']:.3f} | "
            f"{sk['psnr']:.2f} / {sk['ssim']:.3f} | {nv['label_acc']:.2f}, {sk['label_acc']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
