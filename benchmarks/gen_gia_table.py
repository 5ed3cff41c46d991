"""Generative-prior gradient inversion vs Inverting Gradients on the same targets: IG (Geiping et al., NeurIPS
2020), latent search (GIAS / GGL latent stage) and GIFD (Fang et al., ICCV 2023), mnist5k digits, batch 4,
untrained small CNN, FedSGD gradients, labels recovered by the attack (LLG counting).

The 20 targets (5 batches of 4) are one seeded part of mnist5k; the attacker's prior (a conditional conv
VAE, :mod:`attacks.inversion.priors`) is trained on a disjoint part. IG gets the same budget of payload
simulations as GIFD: ``restarts · iterations + stages · feature_iterations`` signed-Adam iterations.
Besides the attacks, the evaluator reports the prior's own ceilings on the targets (it alone holds them):
the PSNR of the VAE's encoder-decoder reconstruction, and of the best latent fitted to each target by
Adam on the pixel MSE (what a perfect latent search could reach).

    python benchmarks/gen_gia_table.py                       # ~12 min on one CPU core
    python benchmarks/gen_gia_table.py --quick               # a smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from typing import Any

import torch

from attacks.base import INVERSION_ATTACKS, InversionAttack, ProtocolInfo, PublicData, ServerView
from attacks.inversion import generative  # noqa: F401  (registers generative_latent, gifd)
from attacks.inversion.generative import GIFD, GenerativeLatent
from attacks.metrics import psnr
from simulator.data import DATASETS
from simulator.experiment.leakage import attack_update, client_payload
from simulator.models import build_model
from simulator.scenario.leakage import LeakageConfig


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def prior_ceilings(
    att: GenerativeLatent, x: torch.Tensor, y: torch.Tensor, *, steps: int = 300
) -> dict[str, float]:
    """PSNR of the prior on the targets: its encoder-decoder reconstruction, and the best latent per target
    found by Adam on the pixel MSE with the true labels (evaluator side: it uses the truth)."""
    assert att.prior is not None
    vae = att.prior
    with torch.no_grad():
        mu, _ = vae.encoder(x, y)
        enc = float(psnr(vae.decoder(mu, y), x).mean())
    z = mu.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(steps):
        loss = (vae.decoder(z, y) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        fit = float(psnr(vae.decoder(z, y), x).mean())
    return {"encoder": enc, "latent_fit": fit}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--public", type=int, default=4000, help="size of the attacker's public split")
    ap.add_argument("--iterations", type=int, default=200, help="latent-search Adam steps (per restart)")
    ap.add_argument("--feature-iterations", type=int, default=200, help="GIFD Adam steps per generator layer")
    ap.add_argument("--restarts", type=int, default=4)
    ap.add_argument("--prior-epochs", type=int, default=10)
    ap.add_argument("--ig-iterations", type=int, default=None, help="default: the same budget as GIFD")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=None, help="prior cache (default $PRIVSIM_CACHE)")
    ap.add_argument("--quick", action="store_true", help="8 targets, 30 iterations, 2-epoch prior")
    a = ap.parse_args()
    if a.quick:
        a.targets, a.iterations, a.feature_iterations, a.prior_epochs, a.public = 8, 30, 30, 2, 1000
    torch.set_num_threads(a.threads)

    ds = DATASETS.create("mnist5k", {})
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(a.seed))
    targets, pub_idx = perm[: a.targets], perm[a.targets : a.targets + a.public]
    assert not set(targets.tolist()) & set(pub_idx.tolist())
    public = PublicData(
        ds.x[pub_idx], ds.y[pub_idx], source=f"mnist5k, {len(pub_idx)} images outside the targets"
    )
    model = build_model("cnn", {}, input_shape=ds.input_shape, num_classes=ds.num_classes, seed=a.seed)

    common: dict[str, Any] = {
        "iterations": a.iterations,
        "restarts": a.restarts,
        "prior_epochs": a.prior_epochs,
        "label_strategy": "llg",
        "seed": a.seed,
        "cache_dir": a.cache_dir,
    }
    latent = INVERSION_ATTACKS.create("generative_latent", common)
    gifd = INVERSION_ATTACKS.create("gifd", {**common, "feature_iterations": a.feature_iterations})
    assert isinstance(latent, GenerativeLatent) and isinstance(gifd, GIFD)
    t0 = time.perf_counter()
    for gen in (latent, gifd):
        gen.prepare(public, model=model, input_shape=ds.input_shape, num_classes=ds.num_classes)
    prep_s = time.perf_counter() - t0
    info = latent.prior_info  # the first prepare trains (or loads) the prior; the second loads it
    assert info is not None
    assert gifd.prior is not None
    layers = gifd.prior.decoder.num_features
    budget = a.restarts * a.iterations + layers * a.feature_iterations
    ig_iters = a.ig_iterations or budget
    ig = INVERSION_ATTACKS.create(
        "inverting_gradients",
        {"iterations": ig_iters, "restarts": 1, "label_strategy": "llg", "seed": a.seed},
    )
    attacks: list[tuple[str, str, InversionAttack]] = [
        ("inverting_gradients", f"{ig_iters} × 1 restart", ig),
        ("generative_latent", f"{a.iterations} × {a.restarts} restarts", latent),
        ("gifd", f"{a.iterations} × {a.restarts} + {layers} layers × {a.feature_iterations}", gifd),
    ]
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in attacks}
    ceil: list[dict[str, float]] = []
    chosen: list[str] = []
    rand = torch.Generator().manual_seed(a.seed + 1)
    noise_psnr: list[float] = []
    for b in range(0, a.targets, a.batch):
        idx = targets[b : b + a.batch]
        x, y = ds.x[idx], ds.y[idx]
        payload = client_payload(
            model,
            x,
            y,
            cfg=LeakageConfig(protocol="gradient"),
            generator=torch.Generator().manual_seed(a.seed),
        )
        n = int(x.shape[0])
        for name, _, att in attacks:
            view = ServerView(
                model=copy.deepcopy(model),
                payload=payload.detach().clone(),
                protocol=ProtocolInfo(kind="gradient", batch_size=n, num_examples=n),
                input_shape=ds.input_shape,
                num_classes=ds.num_classes,
            )
            rec, m = attack_update(att, view, x, y)
            rows[name].append(m)
            if name == "gifd":
                chosen.append(rec.info["chosen_name"])
            print(
                f"batch {b // a.batch}: {name:<20} PSNR {m['psnr']:6.2f}  SSIM {m['ssim']:.3f}  "
                f"labels {m['label_accuracy']:.2f}  {m['attack_time_s']:6.1f} s",
                flush=True,
            )
        ceil.append(prior_ceilings(gifd, x, y))
        noise_psnr.append(float(psnr(torch.rand(x.shape, generator=rand), x).mean()))

    def mean(name: str, key: str) -> float | None:
        vals = [r[key] for r in rows[name]]
        return None if any(v is None for v in vals) else statistics.fmean(vals)

    print(
        f"\nmnist5k 28×28, {a.targets} targets in batches of {a.batch}, untrained CNN (cnn, seed {a.seed}), "
        f"FedSGD gradient, labels by LLG; prior: conditional VAE (latent 16, width 8), {a.prior_epochs} "
        f"epochs on {info.num_images} public images ({'cache hit' if info.cache_hit else 'trained'}, "
        f"{info.train_seconds:.0f} s to train; prepare {prep_s:.1f} s); {a.threads} thread(s)\n"
    )
    print("| attack | iterations | PSNR dB | SSIM | LPIPS | label acc | s / batch |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, iters, _ in attacks:
        print(
            f"| {name} | {iters} | {_fmt(mean(name, 'psnr'), '.2f')} | {_fmt(mean(name, 'ssim'), '.3f')} | "
            f"{_fmt(mean(name, 'lpips'), '.3f')} | {_fmt(mean(name, 'label_accuracy'), '.2f')} | "
            f"{_fmt(mean(name, 'attack_time_s'), '.1f')} |"
        )
    print(f"| uniform noise (reference) | – | {statistics.fmean(noise_psnr):.2f} | | | | |")
    print(
        f"\nprior ceilings on the targets (evaluator side): encoder-decoder PSNR "
        f"{statistics.fmean(c['encoder'] for c in ceil):.2f} dB, best latent by pixel MSE "
        f"{statistics.fmean(c['latent_fit'] for c in ceil):.2f} dB"
    )
    print("GIFD chosen stage per batch: " + ", ".join(chosen))
    per_batch = ", ".join(f"{r['psnr']:.1f}" for r in rows["gifd"])
    print(
        f"GIFD PSNR per batch: {per_batch}; IG: "
        + ", ".join(f"{r['psnr']:.1f}" for r in rows["inverting_gradients"])
    )


if __name__ == "__main__":
    main()
