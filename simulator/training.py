"""Local training and evaluation (plain SGD path; DP-SGD lives in :mod:`simulator.dp`).

Attacks hook into the loop without owning it through :class:`TrainHooks`: an extra loss term
(constrain-and-scale), a gradient edit before the optimizer step (Neurotoxin's mask) and a model
edit after it (PGD's projection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LocalTrainConfig",
    "TrainHooks",
    "TrainStats",
    "evaluate",
    "iterate_minibatches",
    "make_optimizer",
    "train_local",
]


@dataclass(frozen=True)
class LocalTrainConfig:
    """How a client trains locally in one round."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    max_steps: int | None = None  # cap on local steps (None: full epochs)
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # > 0: mixup (Zhang et al., ICLR 2018), λ ~ Beta(α, α) per mini-batch
    # train with 4-d weights and activations in channels-last (NHWC) memory: faster convolutions on a CPU for
    # some models (benchmarks/bench_compile.py), other kernels, so other roundings (simulation.memory_format)
    channels_last: bool = False


class TrainHooks:
    """No-op hooks; attacks override what they need."""

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        return None

    def before_step(self, model: nn.Module, step: int) -> None:
        """Called after backward, before ``optimizer.step`` (edit ``p.grad`` here)."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after ``optimizer.step`` (project the weights here)."""


@dataclass(frozen=True)
class TrainStats:
    loss: float
    steps: int
    num_examples: int


def make_optimizer(model: nn.Module, cfg: LocalTrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {cfg.optimizer!r}")


def mixup_lambda(alpha: float, generator: torch.Generator) -> float:
    """λ ~ Beta(α, α), drawn from ``generator`` (as X/(X+Y) with X, Y ~ Gamma(α), seeded through NumPy)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    alpha: float,
    label_smoothing: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Mixup (Zhang, Cisse, Dauphin & Lopez-Paz, ICLR 2018): train on ``λx + (1−λ)x[π]`` with the loss
    ``λ·CE(·, y) + (1−λ)·CE(·, y[π])``, i.e. the soft label ``λe_y + (1−λ)e_{y[π]}``; π a seeded shuffle."""
    lam = mixup_lambda(alpha, generator)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    out = model(lam * x + (1 - lam) * x[perm])
    return lam * F.cross_entropy(out, y, label_smoothing=label_smoothing) + (1 - lam) * F.cross_entropy(
        out, y[perm], label_smoothing=label_smoothing
    )


def iterate_minibatches(n: int, batch_size: int, generator: torch.Generator):
    """Shuffled mini-batch index tensors covering ``range(n)`` once."""
    perm = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield perm[start : start + batch_size]


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: LocalTrainConfig,
    *,
    generator: torch.Generator,
    hooks: TrainHooks | None = None,
) -> TrainStats:
    """Mini-batch training in place; returns the mean loss over the steps taken. With ``cfg.channels_last``
    the model trains in channels-last memory and is handed back in the contiguous format."""
    if not cfg.channels_last:
        return _train_local(model, x, y, cfg, generator=generator, hooks=hooks)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # (missing in the stubs)
    try:
        return _train_local(model, x, y, cfg, generator=generator, hooks=hooks)
    finally:
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def _train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: LocalTrainConfig,
    *,
    generator: torch.Generator,
    hooks: TrainHooks | None,
) -> TrainStats:
    hooks = hooks or TrainHooks()
    model.train()
    opt = make_optimizer(model, cfg)
    total, steps = 0.0, 0
    n = int(x.shape[0])
    dev = next(model.parameters()).device
    x, y = x.to(dev), y.to(dev)
    for _ in range(cfg.epochs):
        for idx in iterate_minibatches(n, cfg.batch_size, generator):
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            if cfg.mixup_alpha > 0:
                loss = mixup_loss(
                    model,
                    xb,
                    yb,
                    alpha=cfg.mixup_alpha,
                    label_smoothing=cfg.label_smoothing,
                    generator=generator,
                )
            else:
                loss = F.cross_entropy(model(xb), yb, label_smoothing=cfg.label_smoothing)
            extra = hooks.extra_loss(model, xb, yb)
            if extra is not None:
                loss = loss + extra
            loss.backward()
            hooks.before_step(model, steps)
            opt.step()
            hooks.after_step(model, steps)
            total += float(loss.detach())
            steps += 1
    return TrainStats(loss=total / max(steps, 1), steps=steps, num_examples=n)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``(x, y)``; (nan, nan) on an empty set."""
    if x.shape[0] == 0:
        return math.nan, math.nan
    model.eval()
    dev = next(model.parameters()).device
    correct, loss = 0, 0.0
    for s in range(0, x.shape[0], batch_size):
        out = model(x[s : s + batch_size].to(dev))
        yb = y[s : s + batch_size].to(dev)
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    n = int(x.shape[0])
    return correct / n, loss / n
