"""Standalone leakage experiment: one model, one payload, one inversion attack (no Flower); the payload is one
client's, or the aggregate of K clients' (``[leakage] clients``, ``secure_aggregation``).

Data flow (the same steps as a federated round, numbered as in DESIGN.md):

1. data      the victim's batch: chosen dataset indices or a seeded draw;
   model     built with a seeded init, optionally trained for N SGD steps on the *other* images;
2-3. train   FedSGD: the gradient of the mean loss on the batch; FedAvg: k local SGD steps, Δ = w − w₀;
5. defend    the scenario's client defenses in order (noise, clipping, pruning ...), per client;
8. aggregate with K > 1 clients, the example-weighted mean of their payloads, in the clear or out of
             simulated SecAgg+ (:func:`simulator.secagg.simulate`);
9. observe   the attack gets a :class:`ServerView` (model copy, payload, public protocol facts) and
             nothing else;
13. evaluate the evaluator, which alone holds the truth, scores the reconstruction
             (:func:`attacks.metrics.score_reconstruction`).

Breaching's "case + user + attacker" pipeline is the model (Geiping et al., NeurIPS 2020, and the
``breaching`` framework), with the ground truth kept out of the attacker's inputs by the types.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import (
    INVERSION_ATTACKS,
    InversionAttack,
    ProtocolInfo,
    PublicData,
    Reconstruction,
    ServerView,
    SketchInfo,
)
from attacks.inversion.checks import aggregate_problems
from attacks.labels import capture_input, last_layer_gradient, last_linear
from attacks.metrics import aligned, score_reconstruction
from attacks.progress import shown
from defenses.base import CLIENT_DEFENSES
from simulator.context import ClientContext, RoundContext, derive_seed, make_generator, run_secret
from simulator.data import DATASETS
from simulator.flat import flatten, layout_of, model_vector
from simulator.models import build_model
from simulator.plots import fit_text, pyplot, save_figure, text_height, wrap
from simulator.results import ResultsStore, RunResult, default_out_dir, versions
from simulator.round import ClientPlugins, decode_updates, defend_update, inspect_model
from simulator.scenario import Problem, Scenario, ScenarioError
from simulator.scenario.leakage import LeakageConfig
from simulator.secagg import SecAggParams, simulate
from simulator.sketching.base import COMPRESSORS, Compressor, Identity
from simulator.training import LocalTrainConfig, train_local

__all__ = [
    "LeakageCase",
    "attack_update",
    "client_payload",
    "gradient_view",
    "grid_figure",
    "label_count_metrics",
    "last_layer_case",
    "prepare_leakage",
    "psnr_text",
    "run_experiment",
    "run_leakage",
    "save_grid",
    "view_on_device",
]


@dataclass(frozen=True)
class LeakageCase:
    """What a leakage experiment sets up: the server's view, and (apart) the truth for the evaluator.

    ``refused`` is set when a client defense rejected the model the server sent (the client then sends
    nothing and there is nothing to attack; with several clients, when every one of them refused).
    ``aggregate`` describes the server's aggregate of several clients (None for one client's payload)."""

    view: ServerView
    truth_x: torch.Tensor
    truth_y: torch.Tensor
    indices: tuple[int, ...]
    refused: str | None = None
    public_source: str | None = None
    soft_y: torch.Tensor | None = None  # the victim's soft labels (label smoothing / mixup), evaluator side
    aggregate: dict[str, Any] | None = None  # clients, how they were aggregated, SecAgg+ facts


def _train_config(cfg: LeakageConfig, n: int) -> LocalTrainConfig:
    bs = min(cfg.batch_size or n, n)
    steps = cfg.local_steps if cfg.protocol == "update" else 1
    epochs = max(1, math.ceil(steps * bs / n))
    return LocalTrainConfig(
        epochs=epochs, batch_size=bs, lr=cfg.lr, max_steps=steps, label_smoothing=cfg.label_smoothing
    )


def client_payload(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: LeakageConfig, generator: torch.Generator
) -> torch.Tensor:
    """The flat payload the victim computes before defenses: ``∇θ L`` (FedSGD) or ``Δ = w_local − w_global``
    after ``cfg.local_steps`` SGD steps (FedAvg), laid out per :func:`simulator.flat.layout_of`.

    ``y`` holds class indices, or probabilities (B, K) for mixed-up inputs; ``cfg.label_smoothing``
    smooths either, as :func:`torch.nn.functional.cross_entropy` does."""
    layout = layout_of(model)
    victim = copy.deepcopy(model)
    victim.train()
    if cfg.protocol == "gradient":
        params = dict(victim.named_parameters())
        loss = F.cross_entropy(victim(x), y, label_smoothing=cfg.label_smoothing)
        grads = torch.autograd.grad(loss, list(params.values()))
        state = {k: torch.zeros_like(v) for k, v in victim.state_dict().items()}
        state.update(zip(params, grads))
        return flatten(state, layout)
    w0 = model_vector(model, layout)
    train_local(victim, x, y, _train_config(cfg, int(x.shape[0])), generator=generator)
    return model_vector(victim, layout) - w0


def gradient_view(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, label_smoothing: float = 0.0
) -> ServerView:
    """What an honest server receives from a FedSGD client on (x, y), with no defense: the gradient of the
    mean cross-entropy (``y`` class indices or probabilities, optionally label-smoothed), as
    :func:`client_payload` computes it. For tests and benchmarks that build a single case by hand."""
    cfg = LeakageConfig(protocol="gradient", label_smoothing=label_smoothing)
    payload = client_payload(model, x, y, cfg=cfg, generator=torch.Generator())
    with torch.no_grad():
        num_classes = int(model(x[:1]).shape[1])
    return ServerView(
        model=copy.deepcopy(model),
        payload=payload.detach(),
        protocol=ProtocolInfo(kind="gradient", num_examples=int(x.shape[0]), batch_size=int(x.shape[0])),
        input_shape=tuple(x.shape[1:]),
        num_classes=num_classes,
    )


def last_layer_case(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One soft-label case: the last linear layer's (weight, bias) gradient read from :func:`gradient_view`,
    that layer's (weight, bias), and the evaluator's ground truth, the layer's input for the first example."""
    gw, gb = last_layer_gradient(gradient_view(model, x, y, label_smoothing=label_smoothing))
    wname, bname = last_linear(model)
    layer = model.get_submodule(wname[: -len(".weight")] if "." in wname else "")
    with torch.no_grad(), capture_input(layer) as seen:
        model(x)
    state = model.state_dict()
    return gw, gb, state[wname], (state[bname] if bname is not None else None), seen[0][0]


def _victim_indices(s: Scenario, cfg: LeakageConfig, n_total: int) -> torch.Tensor:
    if cfg.images is not None:
        bad = [i for i in cfg.images if i >= n_total]
        if bad:
            raise ScenarioError(
                s.source,
                [Problem("leakage.images", f"indices {bad} outside the data set ({n_total} images)")],
            )
        return torch.as_tensor(cfg.images, dtype=torch.long)
    if cfg.total_images > n_total:
        many = f" for {cfg.clients} clients × {cfg.num_images}" if cfg.clients > 1 else ""
        raise ScenarioError(
            s.source, [Problem("leakage.num_images", f"only {n_total} images in the data set{many}")]
        )
    return torch.randperm(n_total, generator=make_generator(s.seed, "leakage", "images"))[: cfg.total_images]


def _soft_batch(
    ds: Any, idx: torch.Tensor, cfg: LeakageConfig, seed: int, rest: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[int]]:
    """The victim's inputs and training targets: hard labels, or mixup pairs (Zhang et al., ICLR 2018)
    with seeded partners from ``rest``; returns (x, y, soft targets or None, partner indices)."""
    x, y = ds.x[idx].clone(), ds.y[idx].clone()
    if cfg.mixup_lambda is None:
        return x, y, None, []
    g = make_generator(seed, "leakage", "mixup")
    partners = torch.as_tensor(rest)[torch.randperm(len(rest), generator=g)[: len(idx)]]
    lam = cfg.mixup_lambda
    xm = lam * x + (1 - lam) * ds.x[partners]
    soft = (
        lam * F.one_hot(y, ds.num_classes).float()
        + (1 - lam) * F.one_hot(ds.y[partners], ds.num_classes).float()
    )
    return xm, y, soft, [int(i) for i in partners]


def _public_split(s: Scenario, cfg: LeakageConfig, ds: Any, rest: np.ndarray) -> PublicData:
    """The attacker's public data: a seeded draw of ``cfg.public_images`` images outside the victims'
    batch."""
    g = make_generator(s.seed, "leakage", "public")
    take = torch.as_tensor(rest)[torch.randperm(len(rest), generator=g)[: min(cfg.public_images, len(rest))]]
    return PublicData(
        x=ds.x[take].clone(),
        y=ds.y[take].clone(),
        source=f"{s.data.dataset}: {len(take)} images outside the victim's batch",
    )


def prepare_leakage(scenario: Scenario, attack: InversionAttack | None = None) -> LeakageCase:
    """Build the victim's batch, the model, the defended payload and the ServerView.

    With an ``attack``, the attacker-side set-up happens first and with public data only
    (:meth:`~attacks.base.InversionAttack.prepare`); a malicious server then sends its modified model
    (:meth:`~attacks.base.InversionAttack.server_model`), which the clients' defenses may inspect and
    refuse. With ``[leakage] clients = K`` every client computes and defends its payload alone, and the view
    holds their aggregate (see :mod:`simulator.scenario.leakage`)."""
    s = scenario
    cfg = s.leakage or LeakageConfig()
    problems = aggregate_problems(s)  # also a load-time check; here for scenarios built without the loader
    if problems:
        raise ScenarioError(s.source, problems)
    ds = DATASETS.create(s.data.dataset, s.data.params)
    n_total = len(ds)
    idx = _victim_indices(s, cfg, n_total)
    rest = np.setdiff1d(np.arange(n_total), idx.numpy())
    x, y, soft, partners = _soft_batch(ds, idx, cfg, s.seed, rest)
    rest = np.setdiff1d(rest, np.asarray(partners, dtype=np.int64))
    model = build_model(
        s.model.name,
        s.model.params,
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        seed=derive_seed(s.seed, "leakage", "model"),
    )
    if cfg.pretrain_steps > 0:
        pre_idx = torch.as_tensor(rest, dtype=torch.long)
        bs = min(cfg.pretrain_batch_size, len(pre_idx))
        pre = LocalTrainConfig(
            epochs=max(1, math.ceil(cfg.pretrain_steps * bs / len(pre_idx))),
            batch_size=bs,
            lr=cfg.pretrain_lr,
            max_steps=cfg.pretrain_steps,
        )
        train_local(
            model, ds.x[pre_idx], ds.y[pre_idx], pre, generator=make_generator(s.seed, "leakage", "pretrain")
        )
    agreed = layout_of(model)  # the architecture the federation agreed on
    public = None
    if attack is not None:
        public = _public_split(s, cfg, ds, rest) if attack.needs_public_data else None
        attack.prepare(
            public, model=copy.deepcopy(model), input_shape=tuple(ds.input_shape), num_classes=ds.num_classes
        )
        if attack.malicious_server:
            model = attack.server_model(copy.deepcopy(model))
    clients = cfg.clients
    per = int(x.shape[0]) // clients  # images per client: client c holds x[c·per : (c+1)·per]
    train = _train_config(cfg, per)
    target = y if soft is None else soft
    plugins = ClientPlugins(
        defenses=tuple(CLIENT_DEFENSES.create(d.name, d.params) for d in s.defenses.client),
        compressor=_compressor(s),
    )
    layout = layout_of(model)
    secret = run_secret(s.privacy.noise_seed)
    sent_payloads: list[torch.Tensor] = []
    counts: list[int] = []
    refusals: list[str] = []
    sketch = None
    for c in range(clients):
        rows = slice(c * per, (c + 1) * per)
        ctx = ClientContext(
            partition_id=c,
            server_round=1,
            seed=s.seed,
            num_examples=per,
            global_vector=model_vector(model, layout),
            layout=agreed,
            train=train,
            num_clients=clients,
            expected_clients_per_round=float(clients),
            received_model=model,
            data=(x[rows], target[rows]),
            noise_key=derive_seed(secret, "client", c),
        )
        why = inspect_model(plugins.defenses, model, ctx)  # before step 1, as in a federated round
        if why is not None:
            refusals.append(why)
            continue
        # steps 2-3 (FedSGD gradient or FedAvg update), then step 5 of the round core: defenses, compression
        gen = make_generator(s.seed, "leakage", "client", *(() if c == 0 else (c,)))
        delta = client_payload(model, x[rows], target[rows], cfg=cfg, generator=gen)
        sent, _ = defend_update(delta, ctx, plugins, {})
        payload, sketch = _received(
            s, plugins.compressor, sent, ctx, want_sketch=attack is not None and attack.wants_sketch
        )
        sent_payloads.append(payload.detach())
        counts.append(per)
    how = "secagg" if cfg.secure_aggregation else ("mean" if clients > 1 else "none")
    protocol = ProtocolInfo(
        kind=cfg.protocol,
        lr=cfg.lr if cfg.protocol == "update" else None,
        local_steps=train.max_steps if cfg.protocol == "update" else None,
        local_epochs=train.epochs if cfg.protocol == "update" else None,
        batch_size=train.batch_size,
        num_examples=sum(counts) if counts else per * clients,
        num_clients=max(len(counts), 1),
        aggregate=how,
    )
    indices, source = tuple(int(i) for i in idx), None if public is None else public.source
    if not sent_payloads:  # every client refused the model: nothing was sent
        view = ServerView(
            model=copy.deepcopy(model),
            payload=torch.zeros(layout.dim),
            protocol=protocol,
            input_shape=ds.input_shape,
            num_classes=ds.num_classes,
        )
        info = None if clients == 1 else _aggregate_info(cfg, per, how, refusals, None)
        return LeakageCase(
            view=view,
            truth_x=x,
            truth_y=y,
            indices=indices,
            refused=refusals[0],
            public_source=source,
            soft_y=soft,
            aggregate=info,
        )
    payload, secagg = _aggregate(s, cfg, sent_payloads, counts)
    view = ServerView(
        model=copy.deepcopy(model),
        payload=payload.detach().clone(),
        protocol=protocol,
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        sketch=sketch,
    )
    info = None if clients == 1 else _aggregate_info(cfg, per, how, refusals, secagg)
    return LeakageCase(
        view=view, truth_x=x, truth_y=y, indices=indices, public_source=source, soft_y=soft, aggregate=info
    )


def _aggregate(
    s: Scenario, cfg: LeakageConfig, payloads: list[torch.Tensor], counts: list[int]
) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """Step 8 for an aggregate: the example-weighted mean of the clients' payloads, out of simulated SecAgg+
    (``max_weight`` = the largest example count; stochastic rounding seeded from the scenario seed) or in the
    clear; a single client's payload (no secure aggregation) as it is."""
    if cfg.secure_aggregation:
        params = SecAggParams(max_weight=float(max(counts)))
        gen = make_generator(s.seed, "leakage", "secagg")
        res = simulate(torch.stack(payloads), counts, params, generator=gen)
        facts = {
            "count": res.count,
            "total_weight": res.total_weight,
            "max_abs_error_bound": res.max_abs_error_bound,
            "num_clipped": res.num_clipped,
            "max_weight": params.max_weight,
            "clipping_range": params.clipping_range,
            "quantization_range": params.quantization_range,
            "modulus": params.modulus,
        }
        return res.aggregate.to(payloads[0].dtype), facts
    if len(payloads) == 1:
        return payloads[0], None
    w = torch.as_tensor(counts, dtype=torch.float64)
    mean = (w[:, None] * torch.stack(payloads).double()).sum(0) / w.sum()
    return mean.to(payloads[0].dtype), None


def _aggregate_info(
    cfg: LeakageConfig, per: int, how: str, refusals: list[str], secagg: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "clients": cfg.clients,
        "images_per_client": per,
        "aggregate": how,
        "clients_refused": len(refusals),
        "secure_aggregation": secagg,
    }


def _compressor(s: Scenario) -> Compressor:
    """The scenario's compressor, if a single client's payload can be decoded alone (a per-client sketch)."""
    comp = COMPRESSORS.create(s.compression.name, s.compression.params)
    if isinstance(comp, Identity) or (
        comp.is_sketch and comp.decodes_alone and not comp.aggregates_in_sketch_space
    ):
        return comp
    able = [
        e.name
        for e in COMPRESSORS.entries()
        if getattr(e.factory, "is_sketch", False)
        and getattr(e.factory, "decodes_alone", False)
        and not getattr(e.factory, "aggregates_in_sketch_space", False)
    ]
    raise ScenarioError(
        s.source,
        [
            Problem(
                "compression.name",
                f"{s.compression.name!r} is not a per-client "
                f"sketch; a leakage experiment supports {', '.join(sorted(able))}",
            )
        ],
    )


def _received(
    s: Scenario, comp: Compressor, sent: dict[str, np.ndarray], ctx: ClientContext, *, want_sketch: bool
) -> tuple[torch.Tensor, SketchInfo | None]:
    """What the server holds after step 8: the decoded update (a de-sketched Rᵀ·R·Δ for sketches), or, for
    an attack that matches in sketch space, the raw sketch and the facts it knows about R (shared seed,
    round)."""
    arrays = {k: torch.as_tensor(v) for k, v in sent.items()}
    if want_sketch and comp.is_sketch:
        y = arrays["sketch"].to(torch.float32)
        info = SketchInfo(
            operator=s.compression.name,
            seed=ctx.seed,
            sketch_dim=int(y.numel()),
            params=dict(s.compression.params),
            server_round=ctx.server_round,
            dim=layout_of(ctx.received_model).dim,
        )
        return y, info
    rctx = RoundContext(
        server_round=ctx.server_round,
        seed=ctx.seed,
        global_vector=ctx.global_vector,
        layout=layout_of(ctx.received_model),
        client_ids=(0,),
        num_examples=(ctx.num_examples,),
        num_clients=1,
        expected_clients_per_round=1.0,
    )
    updates, _ = decode_updates(comp, [arrays], torch.ones(1), rctx)
    assert updates is not None  # _compressor admits only compressors that decode per client
    return updates[0], None


def attack_update(
    attack: InversionAttack, view: ServerView, truth_x: torch.Tensor, truth_y: torch.Tensor | None
) -> tuple[Reconstruction, dict[str, Any]]:
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
    metrics["attack_info"] = _plain(recon.info)  # how the attack ran: restarts, compiled, iterations / s ...
    return recon, metrics


def _plain(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` with tensors and numpy values as lists / numbers, so that it goes into summary.json."""
    return json.loads(json.dumps(info, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


#: the side of one image cell of a reconstruction grid, in pixels (a 32×32 image is drawn 8× larger, enough to
#: judge a reconstruction by eye), and the widest grid written: more than 8 images get smaller cells (16: 143
#: px, 32: 71 px), never below ``GRID_MIN_CELL_PX``
GRID_CELL_PX = 264
GRID_MAX_WIDTH_PX = 2400
GRID_MIN_CELL_PX = 64
GRID_DPI = 120


def grid_figure(truth: torch.Tensor, recon: torch.Tensor, *, max_images: int = 8, title: str = "") -> Any:
    """An image grid: ground truth in the top row, the (matched) reconstruction below; each image
    :data:`GRID_CELL_PX` pixels wide at :data:`GRID_DPI` dpi (smaller when more images would make the grid
    wider than :data:`GRID_MAX_WIDTH_PX`), the title wrapped to the grid's width. Returns the figure."""
    plt = pyplot()
    n = max(min(int(truth.shape[0]), max_images), 1)
    cell_px = max(GRID_MIN_CELL_PX, min(GRID_CELL_PX, (GRID_MAX_WIDTH_PX - 100) // n))
    cell = cell_px / GRID_DPI * 1.06  # inches per image, with room for the spacing between axes
    fs = 9.0 if cell_px >= GRID_CELL_PX else 8.0
    width = max(n * cell + 0.45, 4.2)
    head = wrap(title, width - 0.2, fs) if title else ""
    height = 2 * cell + 0.2 + (text_height(head, fs) + 0.15 if head else 0.0)
    fig, axes = plt.subplots(2, n, figsize=(width, height), dpi=GRID_DPI, squeeze=False, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.0, hspace=0.0)
    for row, imgs, label in ((0, truth, "truth"), (1, recon, "reconstruction")):
        for i in range(n):
            ax = axes[row][i]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=8)
            if i >= int(imgs.shape[0]):
                continue
            img = imgs[i].detach().float().clamp(0, 1).permute(1, 2, 0).numpy()
            ax.imshow(
                img[..., 0] if img.shape[-1] == 1 else img,
                cmap="gray" if img.shape[-1] == 1 else None,
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
    if head:
        fig.suptitle(head, fontsize=fs)
    fit_text(fig)
    return fig


def save_grid(
    path: Path, truth: torch.Tensor, recon: torch.Tensor, *, max_images: int = 8, title: str = ""
) -> None:
    """Write :func:`grid_figure` (truth row, reconstruction row) to ``path`` (PNG)."""
    save_figure(grid_figure(truth, recon, max_images=max_images, title=title), path)


def psnr_text(inversion: dict[str, Any]) -> str:
    """The mean PSNR of an ``inversion`` summary block for people: ``"22.78 dB"``, ``"∞ (exact)"`` for an
    exact reconstruction (PSNR +∞, written "inf" in summary.json; ``null`` with MSE 0 in older files), ``"–"``
    when there is none.

    >>> psnr_text({"psnr": "inf"}), psnr_text({"psnr": 22.777}), psnr_text({"psnr": None})
    ('∞ (exact)', '22.78 dB', '–')
    """
    p = inversion.get("psnr")
    if isinstance(p, str):
        p = float(p) if p.strip().lower() in ("inf", "infinity") else None
    if p is None and inversion.get("mse") == 0.0:
        p = math.inf
    if not isinstance(p, (int, float)) or math.isnan(p):
        return "–"
    return "∞ (exact)" if math.isinf(p) and p > 0 else f"{p:.2f} dB"


def _summary(
    s: Scenario, case: LeakageCase, metrics: dict[str, Any], wall: float, out_dir: Path | None
) -> Any:

    inversion = {"attack": s.attacks.inversion.name if s.attacks.inversion else None, **metrics}
    payload = case.view.payload
    return RunResult(
        name=s.name,
        scenario=s.resolved(),
        scenario_digest=s.digest(),
        seed=s.seed,
        engine="leakage",
        versions=versions(),
        rounds=[],
        wall_time_s=wall,
        status="completed",
        out_dir=None if out_dir is None else str(out_dir),
        kind="leakage",
        inversion=inversion,
        client={
            "refused": case.refused,
            "label_smoothing": s.leakage.label_smoothing if s.leakage else 0.0,
            "mixup_lambda": s.leakage.mixup_lambda if s.leakage else None,
            "server": s.leakage.server if s.leakage else "honest",
            "public_data": case.public_source,
        },
        payload={
            "protocol": case.view.protocol.kind,
            "dim": int(payload.numel()),
            "norm": float(payload.norm()),
            "nonzero": int((payload != 0).sum()),
            "clients": case.view.protocol.num_clients,
            "aggregate": case.view.protocol.aggregate,
            "num_examples": case.view.protocol.num_examples,
            **({} if case.aggregate is None else {"cohort": case.aggregate}),
        },
        images=list(case.indices),
    )


def run_leakage(scenario: Scenario, out_dir: Path) -> dict[str, Any]:
    """Run the leakage experiment; writes ``summary.json`` and ``reconstruction.png`` to ``out_dir`` and
    returns the summary (``summary["inversion"]`` holds psnr, ssim, label_accuracy, per_image ...)."""
    result, recon, case = _run(scenario, Path(out_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.to_dict()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    inv = scenario.attacks.inversion
    keep = inv.max_images if inv else 8
    if recon is None:  # the client refused the model: the grid shows what stayed private
        save_grid(
            out / "reconstruction.png",
            case.truth_x,
            torch.full_like(case.truth_x[:keep], 0.5),
            max_images=keep,
            title=f"client refused the model: {case.refused}",
        )
        return summary
    order = summary["inversion"]["order"]
    shown = aligned(recon.images, case.truth_x, order)
    rf = summary["inversion"].get("recovered_fraction")
    title = f"{summary['inversion']['attack']}: mean PSNR {psnr_text(summary['inversion'])}"
    if rf is not None:
        title += f", {rf:.0%} of {case.truth_x.shape[0]} images recovered (≥ 40 dB)"
    save_grid(out / "reconstruction.png", case.truth_x, shown, max_images=keep, title=title)
    return summary


def _run(s: Scenario, out_dir: Path | None) -> tuple[Any, Reconstruction | None, LeakageCase]:
    if s.kind != "leakage":
        raise ScenarioError(
            s.source, [Problem("kind", f'run_leakage needs kind = "leakage" (got {s.kind!r})')]
        )
    if s.attacks.inversion is None:
        raise ScenarioError(
            s.source,
            [
                Problem(
                    "attacks.inversion",
                    "a leakage experiment needs an inversion "
                    f"attack; known: {', '.join(INVERSION_ATTACKS.names())}",
                )
            ],
        )
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch_threads(s.simulation.torch_threads):
        torch.manual_seed(derive_seed(s.seed, "leakage", "torch"))
        attack = INVERSION_ATTACKS.create(s.attacks.inversion.name, s.attacks.inversion.params)
        case = prepare_leakage(s, attack)
        if case.refused is not None:
            return (
                _summary(
                    s,
                    case,
                    refused_metrics(case.refused, int(case.truth_x.shape[0])),
                    time.perf_counter() - t0,
                    out_dir,
                ),
                None,
                case,
            )
        recon, metrics = attack_update(
            attack, view_on_device(s, case.view, attack), case.truth_x, case.truth_y
        )
        if case.soft_y is not None:
            metrics["labels_true_soft"] = case.soft_y.tolist()
        if recon.labels is not None:
            metrics.update(label_count_metrics(recon.labels, case.truth_y, case.view.num_classes))
    return _summary(s, case, metrics, time.perf_counter() - t0, out_dir), recon, case


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` (``simulation.torch_threads``, as the federated runtime does)
    inside the block: on a shared CPU, more threads than free cores make the small tensors of an attack many
    times slower (65 ms vs 2.9 ms per cocktail_party refinement step measured, 2 threads vs 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def view_on_device(s: Scenario, view: ServerView, attack: InversionAttack) -> ServerView:
    """The view moved to ``simulation.device`` for the attack. The case itself is built on the CPU, so the
    victim's batch, model and payload do not depend on the device; the evaluator scores on the CPU."""
    dev = torch.device(s.simulation.device)
    if dev.type == "cpu":
        return view
    if not attack.runs_on_device:
        assert s.attacks.inversion is not None  # ``attack`` was built from it
        able = [e.name for e in INVERSION_ATTACKS.entries() if getattr(e.factory, "runs_on_device", False)]
        raise ScenarioError(
            s.source,
            [
                Problem(
                    "simulation.device",
                    f"{s.simulation.device!r}: attack "
                    f"{s.attacks.inversion.name!r} runs on the CPU only; on a GPU: "
                    f"{', '.join(able)}",
                )
            ],
        )
    return dataclasses.replace(view, model=copy.deepcopy(view.model).to(dev), payload=view.payload.to(dev))


def label_count_metrics(pred: torch.Tensor, true: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Per-class label counts, recovered against true (evaluator side): the counts, their L1 distance
    ``Σ_c |n̂_c − n_c|`` and the fraction of classes whose count is exactly right.

    >>> label_count_metrics(torch.tensor([0, 0, 2]), torch.tensor([0, 1, 2]), 3)["label_count_l1"]
    2
    """
    k = max(
        num_classes, int(pred.max()) + 1 if pred.numel() else 0, int(true.max()) + 1 if true.numel() else 0
    )
    a = torch.bincount(pred.detach().cpu().long().flatten(), minlength=k)
    b = torch.bincount(true.detach().cpu().long().flatten(), minlength=k)
    return {
        "label_counts_recovered": a.tolist(),
        "label_counts_true": b.tolist(),
        "label_count_l1": int((a - b).abs().sum()),
        "label_count_accuracy": float((a == b).double().mean()),
    }


def refused_metrics(reason: str, n: int) -> dict[str, Any]:
    """The inversion block when the client refused the server's model: nothing was sent, nothing leaked."""
    return {
        "refused": reason,
        "psnr": None,
        "ssim": None,
        "mse": None,
        "psnr_max": None,
        "lpips": None,
        "label_accuracy": 0.0,
        "recovered_fraction": 0.0,
        "order": [],
        "per_image": [],
        "labels_recovered": None,
        "labels_true": None,
        "restart_losses": [],
        "attack_info": {},
        "attack_time_s": 0.0,
        "images_at_risk": n,
    }


def run_experiment(
    s: Scenario,
    *,
    out_dir: str | Path | None = None,
    store: str | Path | None = None,
    write: bool = True,
    tag: str | None = None,
    progress: bool = False,
) -> Any:
    """What :func:`simulator.run` calls for a non-federated scenario; returns a ``RunResult``.

    ``progress`` draws the attack's loops as progress bars on stderr (:mod:`attacks.progress`)."""

    if not write:
        with shown(progress):
            return _run(s, None)[0]
    out = Path(out_dir) if out_dir is not None else default_out_dir(s)
    rs = ResultsStore(store or s.output.store or Path(s.output.dir) / "privsim-results.sqlite")
    run_id = rs.start_run(digest=s.digest(), name=s.name, out_dir=str(out), tag=tag)
    try:
        with shown(progress):
            run_leakage(s, out)
    except Exception as e:
        rs.fail_run(run_id, str(e))
        raise

    d = json.loads((out / "summary.json").read_text())
    result = RunResult(
        name=d["name"],
        scenario=d["scenario"],
        scenario_digest=d["scenario_digest"],
        seed=d["seed"],
        engine="leakage",
        versions=d["versions"],
        rounds=[],
        wall_time_s=d["wall_time_s"],
        status=d["status"],
        out_dir=str(out),
        kind="leakage",
        inversion=d["inversion"],
        client=d["client"],
        payload=d["payload"],
        images=d["images"],
    )
    rs.finish_run(run_id, result)
    return result
