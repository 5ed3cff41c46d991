"""Record-level DP-SGD inside a client with Opacus
(Abadi et al., "Deep Learning with Differential Privacy", CCS 2016).

Each call builds a fresh :class:`opacus.PrivacyEngine` on a private copy of the model (the runtime's model is
reused across clients and must not keep Opacus hooks), trains, and writes the trained weights back into
the caller's model. After training, the client's earlier accountant rows (``(z, q, steps)`` of every earlier
participation, plus any preprocessing release) are put in front of this call's rows in the engine's
accountant, so the ε that Opacus reports is the client's *cumulative* record-level ε;
it is passed on unchanged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from simulator.training import LocalTrainConfig, TrainStats, make_optimizer

__all__ = ["DPSGDResult", "opacus_epsilon", "per_layer_norms", "train_dpsgd"]

History = list[tuple[float, float, int]]


@dataclass(frozen=True)
class DPSGDResult:
    stats: TrainStats
    epsilon: float  # Opacus's ε(δ) over the whole history, unchanged
    history: History  # accountant history after this call (earlier rows first)
    rows: History  # the rows this call added
    sample_rate: float  # q of this call's steps as Opacus accounts them
    noise_multiplier: float


def opacus_epsilon(history: Sequence[tuple[float, float, int]], *, accountant: str, delta: float) -> float:
    """ε(δ) of an Opacus accountant holding ``history`` (0 for an empty history)."""
    if not history:
        return 0.0
    # deferred: Opacus costs ~1.2 s to import, paid only by a process that runs DP-SGD or asks its accountant
    from opacus.accountants import create_accountant

    acc = create_accountant(accountant)
    acc.history = [tuple(h) for h in history]
    return float(acc.get_epsilon(delta))


def per_layer_norms(model: nn.Module, max_grad_norm: float) -> list[float]:
    """Per-parameter clip norms ``C/√L`` so that the whole per-example gradient has norm ≤ ``C``."""
    n = sum(1 for p in model.parameters() if p.requires_grad)
    return [max_grad_norm / math.sqrt(n)] * n


def train_dpsgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: LocalTrainConfig,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    delta: float,
    generator: torch.Generator,
    noise_generator: torch.Generator,
    clipping: str = "flat",
    grad_sample_mode: str = "hooks",
    poisson_sampling: bool = True,
    accountant: str = "prv",
    history: Sequence[tuple[float, float, int]] = (),
) -> DPSGDResult:
    """DP-SGD for ``cfg.epochs`` epochs (or ``cfg.max_steps`` steps); ``model`` is updated in place.

    Parameters
    ----------
    model:
        Trained in place (through a private copy wrapped by Opacus).
    x, y:
        The client's examples.
    cfg:
        Local lr, epochs, (expected) batch size, optimizer.
    noise_multiplier, max_grad_norm:
        ``z`` and ``C``: per-example gradients are clipped to ``C``, noise ``N(0, (zC)²)`` is
        added to their sum.
    delta:
        δ of the reported ε.
    generator, noise_generator:
        Seeded generators for batch sampling and for the DP noise.
    clipping:
        ``"flat"`` or ``"per_layer"`` (each of the ``L`` parameter tensors clipped to ``C/√L``).
    grad_sample_mode:
        Opacus per-sample gradient engine: ``"hooks"``, ``"functorch"``, ``"ew"`` or ``"ghost"``.
    poisson_sampling:
        Poisson batches (accounted as Opacus does). False: shuffled fixed batches, accounted as one
        unamplified Gaussian per epoch (each example is in one batch per epoch), i.e. ``(z, 1.0, epochs)``.
    accountant:
        Opacus accountant: ``"prv"`` or ``"rdp"``.
    history:
        Earlier ``(z, q, steps)`` rows of this client (earlier rounds, preprocessing releases).
    """
    # deferred: Opacus costs ~1.2 s to import, paid only by a process that runs DP-SGD
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    work = ModuleValidator.fix(copy.deepcopy(model))
    if set(work.state_dict()) != set(model.state_dict()):
        raise ValueError(
            "ModuleValidator.fix changed the model's layers (BatchNorm?); build the model with "
            "Opacus-compatible normalisation (GroupNorm) so DP-SGD weights map back"
        )
    work.train()
    opt = make_optimizer(work, cfg)
    loader = DataLoader(TensorDataset(x, y), batch_size=cfg.batch_size, shuffle=True, generator=generator)
    engine = PrivacyEngine(accountant=accountant)
    clip: float | list[float] = (
        per_layer_norms(work, max_grad_norm) if clipping == "per_layer" else max_grad_norm
    )
    crit_in = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    out = engine.make_private(
        module=work,
        optimizer=opt,
        criterion=crit_in,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=clip,
        clipping=clipping,
        poisson_sampling=poisson_sampling,
        grad_sample_mode=grad_sample_mode,
        noise_generator=noise_generator,
    )
    if grad_sample_mode == "ghost":
        dp_model, dp_opt, criterion, dp_loader = out
    else:
        dp_model, dp_opt, dp_loader = out
        criterion = crit_in
    sample_rate = 1.0 / len(dp_loader)
    total, steps, epochs_run = 0.0, 0, 0
    for _ in range(cfg.epochs):
        if cfg.max_steps is not None and steps >= cfg.max_steps:
            break
        epochs_run += 1
        for xb, yb in dp_loader:
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
            dp_opt.zero_grad(set_to_none=True)  # set_to_none: required by grad_sample_mode="ew"
            loss = criterion(dp_model(xb), yb)  # ghost: the wrapped criterion runs both backward passes
            loss.backward()
            dp_opt.step()  # an empty Poisson batch still gets noise and counts as a step
            if xb.shape[0] > 0:
                total += float(loss.detach())
            steps += 1
    # this call's rows as Opacus's accountant recorded them (its step hook merges equal (z, q) rows)
    rows: History = [(float(a), float(b), int(c)) for a, b, c in engine.accountant.history]
    if not poisson_sampling:
        rows = [(float(noise_multiplier), 1.0, epochs_run)] if epochs_run else []
    new_history: History = [(float(a), float(b), int(c)) for a, b, c in history] + rows
    engine.accountant.history = list(new_history)  # earlier rows first; Opacus computes ε over all of them
    eps = float(engine.get_epsilon(delta)) if new_history else 0.0
    with torch.no_grad():
        trained = dp_model._module.state_dict()
        model.load_state_dict(trained)
    return DPSGDResult(
        stats=TrainStats(loss=total / max(steps, 1), steps=steps, num_examples=int(x.shape[0])),
        epsilon=eps,
        history=new_history,
        rows=rows,
        sample_rate=sample_rate,
        noise_multiplier=noise_multiplier,
    )
