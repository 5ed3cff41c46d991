"""A cohort's local training as one vectorised computation (``torch.func``): every client's parameters are
stacked along a leading axis and each local SGD step is one ``vmap(grad(...))`` call over the clients'
mini-batches.

Semantics are exactly those of :func:`simulator.training.train_local` for each client:

- the same mini-batch order (the client's own generator draws the same permutations);
- the same loss: mean cross-entropy (with label smoothing) over the real examples of the batch — a short
  last batch is padded to the batch size with weight-0 examples;
- the same optimizer: ``torch.optim.SGD`` with momentum (no dampening, no Nesterov) and weight decay, whose
  momentum buffer starts at the first gradient;
- the same step count: a client with fewer batches is masked on the remaining steps, its weights and
  momentum buffer frozen.

With exact kernels the trained weights are bit-identical to the per-client loop; with batched kernels only
the floating-point summation order differs (~1e-6 relative). ``tests/test_vectorised.py`` and
``tests/test_exact_kernels.py`` check both against the loop.

The weight layers run with one of two kinds of kernels (``kernels``):

- ``"batched"``: one batched kernel per layer over all clients (a grouped convolution, a batched matrix
  product). Fast where per-client overhead dominates (tiny MLPs: 5× and more); the sums run in another order,
  so the weights agree with the per-client loop to ~1e-7 per step, and local SGD can amplify that;
- ``"exact"``: each client's own call per weight layer (:mod:`simulator.exact_kernels`), bit-identical to the
  per-client loop; costs about what the loop costs on a CPU;

``"auto"`` picks exact kernels for models with convolutions or pooling (batched convolutions are no faster on
a CPU, and a max-pool near-tie sends a batched step's gradient elsewhere), batched kernels otherwise.

What cannot be vectorised is refused by :func:`why_not_vectorised` (and then runs per client): Adam, mixup,
models with buffers (BatchNorm running statistics), random layers (dropout), max-pooling with batched kernels,
weights outside the layers exact kernels cover.

Whether vectorising pays depends on the model and the device (batched-weight convolutions are slow on a CPU,
tiny MLPs gain 5× and more): :func:`pays_off` measures one step both ways and caches the answer on disk so
that a scenario takes the same path on every run (``simulation.vectorise = "auto"``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from simulator.exact_kernels import AVG_POOLS, MAX_POOLS, ExactKernels, why_not_exact
from simulator.flat import Layout
from simulator.training import LocalTrainConfig, TrainStats, iterate_minibatches

__all__ = [
    "CohortMember",
    "Kernels",
    "batch_plan",
    "pays_off",
    "resolve_kernels",
    "train_cohort",
    "train_cohort_flat",
    "why_not_vectorised",
]

_CONV_OR_POOL: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, *AVG_POOLS, *MAX_POOLS)
_RANDOM_LAYERS = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


@dataclass(frozen=True)
class CohortMember:
    """One client of a vectorised cohort: its examples and its training generator
    (``ctx.generator("train")``)."""

    x: torch.Tensor
    y: torch.Tensor
    generator: torch.Generator


Kernels = Literal["auto", "batched", "exact"]


def resolve_kernels(model: nn.Module, kernels: Kernels = "auto") -> Literal["batched", "exact"]:
    """The kernels a vectorised step of ``model`` uses: ``"auto"`` is exact for models with convolutions or
    pooling layers, batched otherwise."""
    if kernels != "auto":
        return kernels
    return "exact" if any(isinstance(m, _CONV_OR_POOL) for m in model.modules()) else "batched"


def why_not_vectorised(model: nn.Module, cfg: LocalTrainConfig, kernels: Kernels = "auto") -> str | None:
    """Why this model / recipe must train per client, or None when the vectorised path (with ``kernels``)
    reproduces it."""
    if cfg.optimizer != "sgd":
        return f"optimizer {cfg.optimizer!r} (the vectorised step is SGD with momentum and weight decay)"
    if cfg.mixup_alpha > 0:
        return "mixup draws its own randomness per batch"
    if any(True for _ in model.buffers()):
        return "the model has buffers (e.g. BatchNorm running statistics)"
    if any(isinstance(m, _RANDOM_LAYERS) for m in model.modules()):
        return "the model has dropout layers (their randomness differs under vmap)"
    if resolve_kernels(model, kernels) == "exact":
        return why_not_exact(model)
    if any(isinstance(m, MAX_POOLS) for m in model.modules()):
        # measured on quickstart's CNN: batched-weight convolutions round differently (~1e-7), a max-pool
        # window whose top two values are that close routes the gradient to the other one, and one client's
        # first-step conv gradient differed by 1e-3 (3 rounds: accuracy 5e-3 apart); with average pooling
        # the same client agreed to 4e-6
        return (
            "the model has max-pooling layers (near-ties route the gradient differently with batched "
            "kernels; exact kernels reproduce them)"
        )
    return None


def batch_plan(n: int, cfg: LocalTrainConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """The mini-batch index tensors :func:`~simulator.training.train_local` would use, in order
    (epochs of seeded permutations, capped at ``cfg.max_steps``)."""
    plan: list[torch.Tensor] = []
    for _ in range(cfg.epochs):
        for idx in iterate_minibatches(n, cfg.batch_size, generator):
            if cfg.max_steps is not None and len(plan) >= cfg.max_steps:
                break
            plan.append(idx)
    return plan


def train_cohort(
    model: nn.Module, members: Sequence[CohortMember], cfg: LocalTrainConfig, kernels: Kernels = "auto"
) -> list[tuple[dict[str, torch.Tensor], TrainStats]]:
    """Train every member from ``model``'s current weights, as :func:`train_local` would one by one; returns
    each member's trained parameters (``named_parameters`` names, detached) and its training statistics.
    ``model`` itself is not changed."""
    params, frozen, stats = _train(model, members, cfg, kernels)
    names = [n for n, _ in model.named_parameters()]
    return [
        ({n: (params[n][i] if n in params else frozen[n]).detach() for n in names}, st)
        for i, st in enumerate(stats)
    ]


def train_cohort_flat(
    model: nn.Module,
    members: Sequence[CohortMember],
    cfg: LocalTrainConfig,
    layout: Layout,
    kernels: Kernels = "auto",
) -> tuple[torch.Tensor, list[TrainStats]]:
    """:func:`train_cohort` with the trained weights as one matrix, a row per member (the flat vector of
    :func:`simulator.flat.flatten` in ``layout`` order): built in one copy instead of one per client."""
    params, frozen, stats = _train(model, members, cfg, kernels)
    c = len(members)
    if not c:
        return torch.zeros(0, layout.dim), []
    cols = [
        (params[n] if n in params else frozen[n].unsqueeze(0).expand(c, *frozen[n].shape))
        .reshape(c, -1)
        .to(torch.float32)
        for n in layout.names
    ]
    return torch.cat(cols, dim=1), stats


def _train(
    model: nn.Module, members: Sequence[CohortMember], cfg: LocalTrainConfig, kernels: Kernels
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[TrainStats]]:
    """The vectorised local training: the stacked trainable parameters ``[C, ...]``, the frozen ones, and
    each member's statistics."""
    why = why_not_vectorised(model, cfg, kernels)
    exact = resolve_kernels(model, kernels) == "exact"
    if why is not None:
        raise ValueError(f"cannot vectorise this training: {why}")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    if not members:
        return {}, frozen, []
    dev = next(model.parameters()).device
    c = len(members)
    # every client starts from the same weights: a broadcast view, materialised by the first update
    params = {
        n: p.detach().unsqueeze(0).expand(c, *p.shape) for n, p in model.named_parameters() if n in names
    }
    owned: set[str] = set()  # parameters whose stacked copy exists (updated at least once)
    bufs: dict[str, torch.Tensor] = {}  # momentum buffers, created from the first gradient as SGD does

    plans = [batch_plan(int(m.x.shape[0]), cfg, m.generator) for m in members]
    steps = max((len(p) for p in plans), default=0)
    b = cfg.batch_size
    # one concatenated data set; per step, one gather of [C, B] global indices (built in NumPy: a few
    # microseconds per client instead of a dozen small tensor operations)
    sizes = np.array([int(m.x.shape[0]) for m in members], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    xs = torch.cat([m.x for m in members]).to(dev)
    ys = torch.cat([m.y for m in members]).to(dev)
    gidx_np = np.repeat(offsets, max(steps, 1) * b).reshape(c, max(steps, 1), b)  # padding: weight 0
    real_np = np.zeros((c, max(steps, 1), b), dtype=np.float64)  # 1: a real example, 0: padding
    count_np = np.ones((c, max(steps, 1)), dtype=np.float64)  # real examples per batch (1 when masked)
    active_np = np.zeros((c, max(steps, 1)), dtype=bool)
    for i, plan in enumerate(plans):
        for t, idx in enumerate(plan):
            k = int(idx.numel())
            gidx_np[i, t, :k] = idx.numpy() + offsets[i]
            real_np[i, t, :k] = 1.0
            count_np[i, t] = k
        active_np[i, : len(plan)] = True
    gidx = torch.from_numpy(gidx_np).to(dev)
    real = torch.from_numpy(real_np).to(dev, xs.dtype)
    count = torch.from_numpy(count_np).to(dev, xs.dtype)
    active = torch.from_numpy(active_np).to(dev)
    everyone = [bool(v) for v in np.all(active_np, axis=0).tolist()]  # steps where no client is masked
    # exact kernels: each client's real rows per step (0: no batch), its padding never reaches a weight layer
    rows = np.where(active_np, count_np, 0).astype(np.int64)  # [C, steps]

    ls = cfg.label_smoothing

    def loss_one(
        p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, r: torch.Tensor, k: torch.Tensor
    ) -> torch.Tensor:
        # F.cross_entropy's mean over the k real rows, in its own arithmetic: (1 - ε)·Σ nll / k
        # + Σ smooth / k · ε / classes, so the gradient reaching the logits is the per-client one, bit for bit
        out = functional_call(model, {**p, **frozen}, (x,))
        logp = F.log_softmax(out, -1)
        loss = (F.nll_loss(logp, y, reduction="none") * r).sum() / k
        if ls:
            smooth = (-logp.sum(-1) * r).sum() / k
            loss = (1 - ls) * loss + smooth * (ls / out.shape[-1])
        return loss

    step_fn = vmap(grad_and_value(loss_one))
    losses = torch.zeros(c, dtype=torch.float64, device=dev)
    was_training = model.training
    model.train()
    try:
        for t in range(steps):
            g_idx = gidx[:, t]
            if exact:
                with ExactKernels(rows=rows[:, t].tolist(), batch=b, channels_last=cfg.channels_last):
                    grads, loss = step_fn(params, xs[g_idx], ys[g_idx], real[:, t], count[:, t])
            else:
                grads, loss = step_fn(params, xs[g_idx], ys[g_idx], real[:, t], count[:, t])
            on = active[:, t]
            with torch.no_grad():
                if everyone[t]:
                    losses += loss.detach().double()
                else:
                    losses += torch.where(on, loss.detach().double(), torch.zeros_like(losses))
                for n in names:
                    _sgd_step(params, bufs, owned, n, grads[n], None if everyone[t] else on, cfg)
    finally:
        model.train(was_training)
    stats = [
        TrainStats(
            loss=float(losses[i]) / max(len(plans[i]), 1), steps=len(plans[i]), num_examples=int(m.x.shape[0])
        )
        for i, m in enumerate(members)
    ]
    return params, frozen, stats


def _sgd_step(
    params: dict[str, torch.Tensor],
    bufs: dict[str, torch.Tensor],
    owned: set[str],
    name: str,
    grad: torch.Tensor,
    on: torch.Tensor | None,
    cfg: LocalTrainConfig,
) -> None:
    """One ``torch.optim.SGD`` step (weight decay, momentum without dampening, the buffer starting as the
    first gradient) for every client's copy of parameter ``name``; ``on`` masks the clients with no batch at
    this step (None: all step). ``owned``: the parameters already materialised (others are broadcast views of
    the starting weights and are replaced, not written in place)."""
    p = params[name]
    g = grad.add(p, alpha=cfg.weight_decay) if cfg.weight_decay else grad
    if on is None:
        if cfg.momentum:
            if name in bufs:
                g = bufs[name].mul_(cfg.momentum).add_(g)
            else:
                bufs[name] = g  # a fresh tensor: the gradient (or gradient + decay) of this step
        if name in owned:
            p.add_(g, alpha=-cfg.lr)
        else:
            params[name] = p.add(g, alpha=-cfg.lr)
            owned.add(name)
        return
    mask = on.view(-1, *([1] * (p.dim() - 1)))
    if cfg.momentum:
        old = bufs.get(name)
        bufs[name] = g = torch.where(
            mask, g if old is None else old * cfg.momentum + g, 0.0 if old is None else old
        )
    params[name] = torch.where(mask, p.add(g, alpha=-cfg.lr), p)
    owned.add(name)


# ---- auto: measure once per (model, data shape, batch, cohort, device, threads), cache on disk ----


def _cache_file() -> Path:
    env = os.environ.get("PRIVSIM_CACHE")
    return (Path(env).expanduser() if env else Path("~/.cache/privsim").expanduser()) / "vectorise.json"


def _key(model: nn.Module, example: torch.Tensor, cfg: LocalTrainConfig, cohort: int, kernels: str) -> str:
    dev = next(model.parameters()).device
    shapes = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    raw = json.dumps(
        [
            type(model).__name__,
            shapes,
            tuple(example.shape[1:]),
            cfg.batch_size,
            cfg.momentum > 0,
            cfg.channels_last,
            cohort,
            str(dev),
            torch.get_num_threads(),
            torch.__version__,
            kernels,
        ]
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _cohort_bucket(n: int) -> int:
    """Cohort sizes are measured in buckets (1, 2, 4, 8, 16, 32): the per-client gain flattens out."""
    return 1 << min(5, max(0, (n - 1).bit_length()))


def _time_per_client(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LocalTrainConfig, c: int, kernels: Kernels
) -> tuple[float, float]:
    """Seconds for one local step of ``c`` clients: vectorised, and as ``c`` per-client optimizer steps."""
    one = LocalTrainConfig(
        epochs=1,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        max_steps=1,
        label_smoothing=cfg.label_smoothing,
        channels_last=cfg.channels_last,
    )
    members = [CohortMember(x, y, torch.Generator().manual_seed(i)) for i in range(c)]
    train_cohort(model, members[:2], one, kernels)  # warm-up
    t0 = time.perf_counter()
    train_cohort(model, members, one, kernels)
    vec = time.perf_counter() - t0
    work = copy.deepcopy(model)
    if cfg.channels_last:  # the per-client loop's format (train_local)
        work.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.SGD(work.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    xb, yb = x[: cfg.batch_size], y[: cfg.batch_size]
    t0 = time.perf_counter()
    for _ in range(c):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(work(xb), yb).backward()
        opt.step()
    loop = time.perf_counter() - t0
    return vec, loop


MIN_COHORT = 4  # below this, auto trains per client without measuring (2 MLP clients: 2× slower vectorised)


def pays_off(
    model: nn.Module, example: torch.Tensor, cfg: LocalTrainConfig, cohort: int, kernels: Kernels = "auto"
) -> bool:
    """Whether training ``cohort`` clients vectorised (with ``kernels``) beats the per-client loop for this
    model, data shape, batch size, device and thread count: measured once (one step each way, random data)
    and cached in ``$PRIVSIM_CACHE/vectorise.json`` (or ``~/.cache/privsim/vectorise.json``), so a scenario
    takes the same path on every later run. Vectorising must win by 20 % to be chosen; cohorts smaller than
    :data:`MIN_COHORT` are not measured (the batched step's fixed cost cannot be earned back)."""
    if why_not_vectorised(model, cfg, kernels) is not None or cohort < MIN_COHORT:
        return False
    c = _cohort_bucket(cohort)
    kind = resolve_kernels(model, kernels)
    key = _key(model, example, cfg, c, kind)
    path = _cache_file()
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return bool(cache[key]["vectorise"])
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    n = max(2 * cfg.batch_size, 2)
    x = torch.rand((n, *example.shape[1:]), generator=gen).to(dev, example.dtype)
    with torch.no_grad():
        k = int(model(x[:1]).shape[-1])
    y = torch.randint(0, k, (n,), generator=gen).to(dev)
    vec, loop = _time_per_client(model, x, y, cfg, c, kind)
    decision = vec < 0.8 * loop
    cache[key] = {
        "vectorise": decision,
        "vectorised_s": vec,
        "loop_s": loop,
        "cohort": c,
        "model": type(model).__name__,
        "kernels": kind,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    except OSError:  # a read-only home: decide again next time
        pass
    return decision
