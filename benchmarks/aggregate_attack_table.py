"""What leaks from an aggregate of K clients: four attacks against the example-weighted mean of K clients'
FedSGD gradients, out of simulated SecAgg+ (Flower's numerics, :func:`simulator.secagg.simulate`) whenever
K ≥ 2 (SecAgg+ refuses a single client: K = 1 is that client's own gradient).

1. Inverting Gradients (Geiping et al., NeurIPS 2020) vs K ∈ {1, 2, 4, 8, 16}: one 32×32 photo per client,
   untrained small CNN (``scenarios/leakage_ig.toml``); the photos are nested (K = 1's photo is image 5 of
   that scenario, every larger cohort adds photos of a seeded order), labels by LLG counting for every K
   (the scenario's iDLG holds for one image only). The server matches one gradient of K images.
2. Robbing the Fed (Fowl et al., ICLR 2022) through SecAgg+ vs K ∈ {1, 4, 16} at 64 mnist5k digits in all
   (64/K per client), 128 brightness bins as in ``scenarios/robbing_the_fed.toml``; the default imprint
   scale (1e-4) and, for comparison, the former default 1e-2, whose imprint drowns in the quantisation.
3. Cocktail Party (Kariyappa et al., ICML 2023) vs K ∈ {1, 2, 4, 8} at 4 mnist5k digits per client,
   untrained MLP (``scenarios/leakage_aggregate.toml``).
4. aggregate_labels (cohort label counts from the last-layer bias, Wainakh et al. 2022) vs K ∈ {1, 4, 16}
   at 4 digits per client, same MLP.

Iterations cut for the CPU: Inverting Gradients runs 1000 iterations × 2 restarts (breaching: 24 000 × 1),
so its PSNRs are a lower bound on what the attack reaches, more so for the larger batches (one iteration
costs ~5 times more at K = 16 than at K = 1); the mean over a cohort mixes easy and hard photos, the
"photo 5" column follows one photo through every cohort. The other attacks run their defaults (the
Cocktail Party's 1000 refinement steps). Measured on one CPU thread: ~8 min in all, all but ~20 s of it IG
(``--iterations 400``, the scenario's setting: ~3.5 min; K = 1 then gives leakage_ig.toml's 22.8 dB).

Measured (seed 0): IG photo 5 at 22.2 / 20.9 / 21.6 / 20.5 / 17.5 dB for K = 1 / 2 / 4 / 8 / 16 (cohort
means 20-25 dB, worst photo 11.6 dB at K = 16); Robbing the Fed 0.67 / 0.64 / 0.66 of the 64 digits for
K = 1 / 4 / 16 (0 through SecAgg+ with the former imprint scale 1e-2); Cocktail Party 45.2 / 41.3 / 39.2 /
33.5 dB, recovering 0.75 / 0.62 / 0.50 / 0.03 of the digits, for K = 1 / 2 / 4 / 8; aggregate_labels exact
label counts (L1 error 0) for K = 1, 4 and 16.

    python benchmarks/aggregate_attack_table.py
    python benchmarks/aggregate_attack_table.py --tables rtf cocktail labels     # ~20 s
    python benchmarks/aggregate_attack_table.py --tables ig --iterations 400
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from simulator import load_scenario, run
from simulator.data import DATASETS

IG = "scenarios/leakage_ig.toml"
RTF = "scenarios/robbing_the_fed.toml"
AGG = "scenarios/leakage_aggregate.toml"


def _run(path: str, over: list[str]) -> tuple[dict[str, Any], dict[str, Any], float]:
    t0 = time.perf_counter()
    r = run(load_scenario(path, over), write=False)
    return r.inversion, r.payload, time.perf_counter() - t0


def _cohort(k: int, per: int) -> list[str]:
    """Overrides for K clients × ``per`` images, through SecAgg+ from K = 2 on."""
    over = [f"leakage.clients={k}", f"leakage.num_images={per}"]
    return [*over, f"leakage.secure_aggregation={'true' if k > 1 else 'false'}"]


def _agg(k: int) -> str:
    return "SecAgg+" if k > 1 else "none (one client)"


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "∞" if v is None else format(v, fmt)


def ig_table(ks: list[int], *, iterations: int, restarts: int) -> None:
    n = len(DATASETS.create("photos", {"size": 32}))
    rest = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    order = [5, *(i for i in rest if i != 5)]  # nested cohorts: K = 1 is leakage_ig.toml's photo
    print(
        f"### Inverting Gradients on the aggregate: one photo (32×32) per client, untrained CNN, FedSGD, "
        f"{iterations} iterations × {restarts} restarts, LLG labels\n"
    )
    print(
        "| K clients | aggregate | mean PSNR (dB) | best / worst PSNR | photo 5 (in every cohort) | SSIM "
        "| label acc. | attack s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for k in ks:
        over = [
            f"leakage.images={order[:k]}",
            f"leakage.clients={k}",
            f"leakage.secure_aggregation={'true' if k > 1 else 'false'}",
            f"attacks.inversion.params.iterations={iterations}",
            f"attacks.inversion.params.restarts={restarts}",
            'attacks.inversion.params.label_strategy="llg"',
        ]
        inv, _, _ = _run(IG, over)
        per = [p["psnr"] for p in inv["per_image"]]
        print(
            f"| {k} | {_agg(k)} | {_f(inv['psnr'])} | {max(per):.2f} / {min(per):.2f} | {per[0]:.2f} "
            f"| {inv['ssim']:.3f} "
            f"| {inv['label_accuracy']:.2f} | {inv['attack_time_s']:.0f} |",
            flush=True,
        )
    print()


def rtf_table(ks: list[int], *, total: int) -> None:
    bins = 128
    lone = (1 - 1 / bins) ** (total - 1)
    print(
        f"### Robbing the Fed through SecAgg+: {total} mnist5k digits in all, {bins} bins, untrained CNN, "
        f"FedSGD (a digit is recovered at ≥ 40 dB; alone in its bin with probability "
        f"(1 − 1/{bins})^{total - 1} = {lone:.2f})\n"
    )
    print(
        "| K clients | digits / client | aggregate | recovered (scale 1e-4, default) | bins hit "
        "| recovered (scale 1e-2, former default) |"
    )
    print("|---|---|---|---|---|---|")
    for k in ks:
        over = [*_cohort(k, total // k), f"attacks.inversion.params.bins={bins}"]
        inv, _, _ = _run(RTF, over)
        old, _, _ = _run(RTF, [*over, "attacks.inversion.params.scale=0.01"])
        rf, rf_old = inv["recovered_fraction"], old["recovered_fraction"]
        print(
            f"| {k} | {total // k} | {_agg(k)} | {rf:.2f} ({round(rf * total)} of {total}) "
            f"| {inv['attack_info']['bins_hit']} | {rf_old:.2f} ({round(rf_old * total)} of {total}) |",
            flush=True,
        )
    print()


def cocktail_table(ks: list[int], *, per: int) -> None:
    print(
        f"### Cocktail Party on the aggregate: {per} mnist5k digits per client, untrained MLP "
        "(784-200-200-10), FedSGD\n"
    )
    print("| K clients | digits | aggregate | mean PSNR (dB) | SSIM | recovered (≥ 40 dB) | attack s |")
    print("|---|---|---|---|---|---|---|")
    for k in ks:
        inv, _, _ = _run(AGG, _cohort(k, per))
        rf, n = inv["recovered_fraction"], k * per
        print(
            f"| {k} | {n} | {_agg(k)} | {_f(inv['psnr'])} | {inv['ssim']:.3f} "
            f"| {rf:.2f} ({round(rf * n)} of {n}) | {inv['attack_time_s']:.1f} |",
            flush=True,
        )
    print()


def labels_table(ks: list[int], *, per: int) -> None:
    print(
        f"### aggregate_labels: cohort label counts, {per} mnist5k digits per client, untrained MLP, FedSGD\n"
    )
    print("| K clients | digits | aggregate | label-count accuracy (10 classes) | L1 error | label acc. |")
    print("|---|---|---|---|---|---|")
    for k in ks:
        inv, _, _ = _run(AGG, [*_cohort(k, per), 'attacks.inversion.name="aggregate_labels"'])
        print(
            f"| {k} | {k * per} | {_agg(k)} | {inv['label_count_accuracy']:.2f} | {inv['label_count_l1']} "
            f"of {k * per} | {inv['label_accuracy']:.2f} |",
            flush=True,
        )
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", nargs="+", choices=["ig", "rtf", "cocktail", "labels"], default=None)
    ap.add_argument("--iterations", type=int, default=1000, help="Inverting Gradients iterations")
    ap.add_argument("--restarts", type=int, default=2, help="Inverting Gradients restarts")
    ap.add_argument("--ig-clients", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    a = ap.parse_args()
    want = set(a.tables or ["ig", "rtf", "cocktail", "labels"])
    t0 = time.perf_counter()
    if "labels" in want:
        labels_table([1, 4, 16], per=4)
    if "rtf" in want:
        rtf_table([1, 4, 16], total=64)
    if "cocktail" in want:
        cocktail_table([1, 2, 4, 8], per=4)
    if "ig" in want:
        ig_table(a.ig_clients, iterations=a.iterations, restarts=a.restarts)
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
