"""Recovered fraction of Robbing the Fed (Fowl et al., ICLR 2022) vs batch size and number of bins:
mnist5k, untrained small CNN behind the imprint block, FedSGD gradient, bins calibrated on 1000 public
digits disjoint from the victim's batch; mean ± sd over seeds (each seed: another batch, public split
and model initialisation).

A digit counts as recovered when its Hungarian-matched reconstruction reaches 40 dB PSNR
(:func:`attacks.metrics.recovered_fraction`). The last column is what equal-mass bins give in
expectation if the victim's measurements follow the public distribution: a digit is alone in its
bin with probability ``(1 − 1/K)^(B−1)``.

    python benchmarks/rtf_curve.py                      # ~1-2 min on one CPU core
    python benchmarks/rtf_curve.py --bins 64 128 256 512 --seeds 0 1 2 3 4 --model mlp
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from attacks.base import PublicData
from attacks.inversion.robbing_the_fed import RobbingTheFed
from attacks.metrics import recovered_fraction
from simulator.context import derive_seed, make_generator
from simulator.data import DATASETS, ArrayDataset
from simulator.experiment import gradient_view
from simulator.models import build_model


def cell(
    ds: ArrayDataset,
    *,
    batch: int,
    bins: int,
    seed: int,
    model_name: str,
    public_images: int,
    measurement: str,
    placement: str,
) -> float:
    """Recovered fraction for one (batch, bins, seed)."""
    perm = torch.randperm(len(ds), generator=make_generator(seed, "rtf_curve", "split"))
    victim, public = perm[:batch], perm[batch : batch + public_images]
    model = build_model(
        model_name,
        {},
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        seed=derive_seed(seed, "rtf_curve", "model"),
    )
    attack = RobbingTheFed(bins=bins, measurement=measurement, placement=placement, seed=seed)
    attack.prepare(
        PublicData(ds.x[public], ds.y[public], source="benchmark"),
        model=model,
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
    )
    x, y = ds.x[victim], ds.y[victim]
    recon = attack.reconstruct(gradient_view(attack.server_model(model), x, y))
    return recovered_fraction(recon.images, x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32, 64, 128, 256])
    ap.add_argument("--bins", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--public-images", type=int, default=1000)
    ap.add_argument("--measurement", choices=["brightness", "random"], default="brightness")
    ap.add_argument("--placement", choices=["quantile", "gaussian"], default="quantile")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = DATASETS.create("mnist5k", {})
    print(
        f"Robbing the Fed on mnist5k, untrained {a.model}, FedSGD, {a.measurement} measurement, "
        f"{a.placement} bins on {a.public_images} public digits; recovered = PSNR >= 40 dB; mean ± sd over "
        f"seeds {a.seeds}\n"
    )
    print(
        "| batch | "
        + " | ".join(f"{k} bins" for k in a.bins)
        + " | "
        + " | ".join(f"(1−1/{k})^(B−1)" for k in a.bins)
        + " |"
    )
    print("|---:|" + "---:|" * (2 * len(a.bins)))
    for b in a.batches:
        row = []
        for k in a.bins:
            vals = [
                cell(
                    ds,
                    batch=b,
                    bins=k,
                    seed=s,
                    model_name=a.model,
                    public_images=a.public_images,
                    measurement=a.measurement,
                    placement=a.placement,
                )
                for s in a.seeds
            ]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row.append(f"{statistics.mean(vals):.3f} ± {sd:.3f}")
        ref = [f"{(1 - 1 / k) ** (b - 1):.3f}" for k in a.bins]
        print(f"| {b} | " + " | ".join(row) + " | " + " | ".join(ref) + " |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
