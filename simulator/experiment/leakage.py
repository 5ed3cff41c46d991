"""Standalone leakage experiment: one client, one model, one payload, one inversion attack (no Flower).

Data flow (the same steps as a federated round, numbered as in DESIGN.md):

1. data      the victim's batch: chosen dataset indices or a seeded draw;
   model     built with a seeded init, optionally trained for N SGD steps on the *other* images;
2-3. train   FedSGD: the gradient of the mean loss on the batch; FedAvg: k local SGD steps, Δ = w − w₀;
5. defend    the scenario's client defenses in order (noise, clipping, pruning ...);
9. observe   the attack gets a :class:`ServerView` (model copy, payload, public protocol facts) and
             nothing else;
13. evaluate the evaluator, which alone holds the truth, scores the reconstruction
             (:func:`attacks.metrics.score_reconstruction`).

Breaching's "case + user + attacker" pipeline is the model (Geiping et al., NeurIPS 2020, and the
``breaching`` framework), with the ground truth kept out of the attacker's inputs by the types.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import INVERSION_ATTACKS, InversionAttack, ProtocolInfo, Reconstruction, ServerView
from attacks.metrics import score_reconstruction
from simulator.context import ClientContext, derive_seed, make_generator
from simulator.data import DATASETS
from simulator.flat import flatten, layout_of, model_vector
from simulator.models import build_model
from simulator.scenario import Problem, Scenario, ScenarioError
from simulator.scenario.leakage import LeakageConfig
from simulator.training import LocalTrainConfig, train_local

__all__ = ["LeakageCase", "prepare_leakage", "client_payload", "attack_update", "run_leakage", "run_experiment",
           "save_grid"]


@dataclass(frozen=True)
class LeakageCase:
    """What a leakage experiment sets up: the server's view, and (apart) the truth for the evaluator."""

    view: ServerView
    truth_x: torch.Tensor
    truth_y: torch.Tensor
    indices: tuple[int, ...]


def _train_config(cfg: LeakageConfig, n: int) -> LocalTrainConfig:
    bs = min(cfg.batch_size or n, n)
    steps = cfg.local_steps if cfg.protocol == "update" else 1
    epochs = max(1, math.ceil(steps * bs / n))
    return LocalTrainConfig(epochs=epochs, batch_size=bs, lr=cfg.lr, max_steps=steps)


def client_payload(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: LeakageConfig,
                   generator: torch.Generator) -> torch.Tensor:
    """The flat payload the victim computes before defenses: ``∇θ L`` (FedSGD) or ``Δ = w_local − w_global``
    after ``cfg.local_steps`` SGD steps (FedAvg), laid out per :func:`simulator.flat.layout_of`."""
    layout = layout_of(model)
    victim = copy.deepcopy(model)
    victim.train()
    if cfg.protocol == "gradient":
        params = dict(victim.named_parameters())
        grads = torch.autograd.grad(F.cross_entropy(victim(x), y), list(params.values()))
        state = {k: torch.zeros_like(v) for k, v in victim.state_dict().items()}
        state.update(zip(params, grads))
        return flatten(state, layout)
    w0 = model_vector(model, layout)
    train_local(victim, x, y, _train_config(cfg, int(x.shape[0])), generator=generator)
    return model_vector(victim, layout) - w0


def prepare_leakage(scenario: Scenario) -> LeakageCase:
    """Build the victim's batch, the model, the defended payload and the ServerView."""
    s = scenario
    cfg = s.leakage or LeakageConfig()
    ds = DATASETS.create(s.data.dataset, s.data.params)
    n_total = len(ds)
    if cfg.images is not None:
        bad = [i for i in cfg.images if i >= n_total]
        if bad:
            raise ScenarioError(s.source, [Problem("leakage.images", f"indices {bad} outside the data set "
                                                                     f"({n_total} images)")])
        idx = torch.as_tensor(cfg.images, dtype=torch.long)
    else:
        if cfg.num_images > n_total:
            raise ScenarioError(s.source, [Problem("leakage.num_images", f"only {n_total} images in the data set")])
        idx = torch.randperm(n_total, generator=make_generator(s.seed, "leakage", "images"))[:cfg.num_images]
    x, y = ds.x[idx].clone(), ds.y[idx].clone()
    model = build_model(s.model.name, s.model.params, input_shape=ds.input_shape, num_classes=ds.num_classes,
                        seed=derive_seed(s.seed, "leakage", "model"))
    if cfg.pretrain_steps > 0:
        rest = torch.as_tensor(np.setdiff1d(np.arange(n_total), idx.numpy()), dtype=torch.long)
        bs = min(cfg.pretrain_batch_size, len(rest))
        pre = LocalTrainConfig(epochs=max(1, math.ceil(cfg.pretrain_steps * bs / len(rest))), batch_size=bs,
                               lr=cfg.pretrain_lr, max_steps=cfg.pretrain_steps)
        train_local(model, ds.x[rest], ds.y[rest], pre, generator=make_generator(s.seed, "leakage", "pretrain"))
    payload = client_payload(model, x, y, cfg=cfg, generator=make_generator(s.seed, "leakage", "client"))
    layout = layout_of(model)
    train = _train_config(cfg, int(x.shape[0]))
    ctx = ClientContext(partition_id=0, server_round=1, seed=s.seed, num_examples=int(x.shape[0]),
                        global_vector=model_vector(model, layout), layout=layout, train=train, num_clients=1,
                        expected_clients_per_round=1.0)
    from defenses.base import CLIENT_DEFENSES

    for spec in s.defenses.client:
        payload = CLIENT_DEFENSES.create(spec.name, spec.params).apply(payload, ctx)
    protocol = ProtocolInfo(kind=cfg.protocol, lr=cfg.lr if cfg.protocol == "update" else None,
                            local_steps=train.max_steps if cfg.protocol == "update" else None,
                            local_epochs=train.epochs if cfg.protocol == "update" else None,
                            batch_size=train.batch_size, num_examples=int(x.shape[0]))
    view = ServerView(model=copy.deepcopy(model), payload=payload.detach().clone(), protocol=protocol,
                      input_shape=ds.input_shape, num_classes=ds.num_classes)
    return LeakageCase(view=view, truth_x=x, truth_y=y, indices=tuple(int(i) for i in idx))


def attack_update(attack: InversionAttack, view: ServerView, truth_x: torch.Tensor,
                  truth_y: torch.Tensor | None) -> tuple[Reconstruction, dict[str, Any]]:
    """Run ``attack`` on the ServerView alone, then score it against the truth (evaluator side).

    This is the observer of step 9 that the federated runtime calls for targeted clients."""
    t0 = time.perf_counter()
    recon = attack.reconstruct(view)
    seconds = time.perf_counter() - t0
    metrics = score_reconstruction(recon, truth_x, truth_y)
    metrics["attack_time_s"] = seconds
    metrics["labels_recovered"] = None if recon.labels is None else [int(v) for v in recon.labels]
    metrics["labels_true"] = None if truth_y is None else [int(v) for v in truth_y]
    metrics["restart_losses"] = list(recon.losses)
    return recon, metrics


def save_grid(path: Path, truth: torch.Tensor, recon: torch.Tensor, *, max_images: int = 8,
              title: str = "") -> None:
    """An image grid: ground truth in the top row, the (matched) reconstruction below (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(int(truth.shape[0]), max_images)
    fig, axes = plt.subplots(2, n, figsize=(max(1.6 * n + 0.6, 3.2), 3.4), squeeze=False)
    for row, imgs, label in ((0, truth, "truth"), (1, recon, "reconstruction")):
        for i in range(n):
            ax = axes[row][i]
            img = imgs[i].detach().float().clamp(0, 1).permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _summary(s: Scenario, case: LeakageCase, metrics: dict[str, Any], wall: float, out_dir: Path | None) -> Any:
    from simulator.results import RunResult, versions

    inversion = {"attack": s.attacks.inversion.name if s.attacks.inversion else None, **metrics}
    payload = case.view.payload
    extra = {
        "kind": "leakage",
        "inversion": inversion,
        "payload": {"protocol": case.view.protocol.kind, "dim": int(payload.numel()),
                    "norm": float(payload.norm()), "nonzero": int((payload != 0).sum())},
        "images": list(case.indices),
    }
    return RunResult(name=s.name, scenario=s.resolved(), scenario_digest=s.digest(), seed=s.seed, engine="leakage",
                     versions=versions(), rounds=[], wall_time_s=wall, status="completed",
                     out_dir=None if out_dir is None else str(out_dir), extra=extra)


def run_leakage(scenario: Scenario, out_dir: Path) -> dict[str, Any]:
    """Run the leakage experiment; writes ``summary.json`` and ``reconstruction.png`` to ``out_dir`` and
    returns the summary (``summary["inversion"]`` holds psnr, ssim, label_accuracy, per_image ...)."""
    import json

    result, recon, case = _run(scenario, Path(out_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.to_dict()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    order = torch.as_tensor(summary["inversion"]["order"])
    inv = scenario.attacks.inversion
    save_grid(out / "reconstruction.png", case.truth_x, recon.images[order], max_images=inv.max_images if inv else 8,
              title=f"{summary['inversion']['attack']}: PSNR {summary['inversion']['psnr']:.2f} dB")
    return summary


def _run(s: Scenario, out_dir: Path | None) -> tuple[Any, Reconstruction, LeakageCase]:
    if s.kind != "leakage":
        raise ScenarioError(s.source, [Problem("kind", f"run_leakage needs kind = \"leakage\" (got {s.kind!r})")])
    if s.attacks.inversion is None:
        raise ScenarioError(s.source, [Problem("attacks.inversion", "a leakage experiment needs an inversion "
                                                                    f"attack; known: {', '.join(INVERSION_ATTACKS.names())}")])
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(s.seed, "leakage", "torch"))
        case = prepare_leakage(s)
        attack = INVERSION_ATTACKS.create(s.attacks.inversion.name, s.attacks.inversion.params)
        recon, metrics = attack_update(attack, case.view, case.truth_x, case.truth_y)
    return _summary(s, case, metrics, time.perf_counter() - t0, out_dir), recon, case


def run_experiment(s: Scenario, *, out_dir: str | Path | None = None, store: str | Path | None = None,
                   write: bool = True, tag: str | None = None) -> Any:
    """What :func:`simulator.run` calls for a non-federated scenario; returns a ``RunResult``."""
    from simulator.results import ResultsStore
    from simulator.runner import default_out_dir

    if not write:
        return _run(s, None)[0]
    out = Path(out_dir) if out_dir is not None else default_out_dir(s)
    rs = ResultsStore(store or s.output.store or Path(s.output.dir) / "privsim-results.sqlite")
    run_id = rs.start_run(digest=s.digest(), name=s.name, out_dir=str(out), tag=tag)
    try:
        run_leakage(s, out)
    except Exception as e:
        rs.fail_run(run_id, str(e))
        raise
    import json

    from simulator.results import RunResult

    d = json.loads((out / "summary.json").read_text())
    result = RunResult(name=d["name"], scenario=d["scenario"], scenario_digest=d["scenario_digest"], seed=d["seed"],
                       engine="leakage", versions=d["versions"], rounds=[], wall_time_s=d["wall_time_s"],
                       status=d["status"], out_dir=str(out),
                       extra={k: d[k] for k in ("kind", "inversion", "payload", "images")})
    rs.finish_run(run_id, result)
    return result
