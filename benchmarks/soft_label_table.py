"""Soft-label recovery (Wang, Liang & He, "Towards Eliminating Hard Label Constraints in Gradient Inversion
Attacks", ICLR 2024) on single-image gradients of mnist5k: label smoothing ε ∈ {0.1, 0.2} and mixup, on an
untrained and a briefly trained MLP and CNN (simulator.models); prints a markdown table.

Per cell, ``--samples`` single-image gradients of the last linear layer (the victim computes
``F.cross_entropy(model(x), y, label_smoothing=ε)``, or the soft-label cross-entropy of a mixup pair
``x = λ₀ x_a + (1 − λ₀) x_b``, ``y = λ₀ e_a + (1 − λ₀) e_b`` with distinct classes and λ₀ ~ U[0.55, 0.95]);
the server recovers ŷ and the feature with :func:`attacks.inversion.soft_label.recover_soft_label`.

Columns: argmax accuracy (the dominant class), for mixup the fraction with both classes right, mean and max
L1 error of the recovered label vector, mean |λ̂₀ − λ₀| (mixup), mean and worst ``1 − cos`` between the
recovered feature and the true penultimate activation, seconds per sample (the recovery only).

    python benchmarks/soft_label_table.py                      # ~1-2 min on one CPU core
    python benchmarks/soft_label_table.py --implied weight     # the bias-free form of the implied label
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attacks.inversion.soft_label import recover_soft_label
from simulator.data import DATASETS
from simulator.experiment import last_layer_case
from simulator.models import build_model
from simulator.training import LocalTrainConfig, train_local


def cell(
    model: nn.Module, ds, pool: np.ndarray, *, setting: str, samples: int, implied: str, seed: int
) -> dict:
    rng = np.random.default_rng(seed)
    k = ds.num_classes
    hits = both = 0
    l1, lam_err, cos, secs = [], [], [], []
    for _ in range(samples):
        if setting == "mixup":
            a = int(rng.choice(pool))
            b = int(rng.choice(pool[ds.y[pool].numpy() != int(ds.y[a])]))
            lam0 = float(rng.uniform(0.55, 0.95))
            x = lam0 * ds.x[a : a + 1] + (1 - lam0) * ds.x[b : b + 1]
            y = (
                lam0 * F.one_hot(ds.y[a : a + 1], k).float()
                + (1 - lam0) * F.one_hot(ds.y[b : b + 1], k).float()
            )
            truth, kind, eps = y[0].double(), "mixup", 0.0
        else:
            a = int(rng.choice(pool))
            eps = float(setting.split("=")[1])
            x, y = ds.x[a : a + 1], ds.y[a : a + 1]
            truth, kind = F.one_hot(y[0], k).double() * (1 - eps) + eps / k, "smoothing"
        gw, gb, w, bias, feat = last_layer_case(model, x, y, label_smoothing=eps)
        t0 = time.perf_counter()
        res = recover_soft_label(
            grad_weight=gw, grad_bias=gb, weight=w, bias=bias, kind=kind, implied=implied
        )
        secs.append(time.perf_counter() - t0)
        hits += int(int(res.label.argmax()) == int(ds.y[a]))
        l1.append(float((res.label - truth).abs().sum()))
        cos.append(float(F.cosine_similarity(res.feature, feat.double(), dim=0)))
        if kind == "mixup":
            top2 = torch.topk(res.label, 2).indices.tolist()
            both += int(sorted(top2) == sorted([int(ds.y[a]), int(ds.y[b])]))
            lam_err.append(abs(float(res.label[int(ds.y[a])]) - lam0))
    return {
        "acc": hits / samples,
        "both": both / samples if setting == "mixup" else None,
        "l1_mean": float(np.mean(l1)),
        "l1_max": float(np.max(l1)),
        "lam_err": float(np.mean(lam_err)) if lam_err else None,
        "cos_mean": float(np.mean(cos)),
        "cos_min": float(np.min(cos)),
        "sec": float(np.mean(secs)),
    }


def accuracy(model: nn.Module, ds, idx: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(ds.x[idx]).argmax(1) == ds.y[idx]).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=100, help="single-image gradients per cell")
    ap.add_argument("--train-steps", type=int, default=300, help="SGD steps of the 'trained' models")
    ap.add_argument("--implied", choices=["auto", "bias", "weight"], default="auto")
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    ds = DATASETS.create("mnist5k", {})
    perm = np.random.default_rng(a.seed).permutation(len(ds))
    train, pool = perm[:4000], perm[4000:]  # the victims' images are never in the training set
    settings = ["smoothing ε=0.1", "smoothing ε=0.2", "mixup"]
    print(
        f"Soft-label recovery (Wang, Liang & He, ICLR 2024), mnist5k, {a.samples} single-image gradients per "
        f"cell, implied label form '{a.implied}', seed {a.seed}\n"
    )
    print(
        "| model | state (test acc) | setting | argmax acc | both classes | mean L1 | max L1 "
        "| mean abs λ₀ err | feature 1 − cos mean / max | s / sample |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in a.models:
        for state in ("untrained", "trained"):
            model = build_model(name, {}, input_shape=ds.input_shape, num_classes=ds.num_classes, seed=a.seed)
            if state == "trained":
                cfg = LocalTrainConfig(epochs=1, batch_size=32, lr=0.05, max_steps=a.train_steps)
                train_local(
                    model, ds.x[train], ds.y[train], cfg, generator=torch.Generator().manual_seed(a.seed)
                )
            model.train()
            acc = accuracy(model, ds, pool)
            label = (
                f"{state} ({acc:.2f})" if state == "untrained" else f"{a.train_steps} SGD steps ({acc:.2f})"
            )
            for i, setting in enumerate(settings):
                r = cell(
                    model,
                    ds,
                    pool,
                    setting=setting.replace("smoothing ε", "eps"),
                    samples=a.samples,
                    implied=a.implied,
                    seed=a.seed + i,
                )
                both = "–" if r["both"] is None else f"{r['both']:.2f}"
                lam = "–" if r["lam_err"] is None else f"{r['lam_err']:.1e}"
                print(
                    f"| {name} | {label} | {setting} | {r['acc']:.2f} | {both} | {r['l1_mean']:.1e} | "
                    f"{r['l1_max']:.1e} | {lam} | {1 - r['cos_mean']:.0e} / {1 - r['cos_min']:.0e} | "
                    f"{r['sec']:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
