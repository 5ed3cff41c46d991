"""The client step of a round, DESIGN.md steps 1-6, as one pure function every engine calls.

1. data      the client's examples (the attacker's poisoned view); the received model is inspected first
2. train     the privacy mechanism's local training (DP-SGD) or plain local SGD
3. update    Δ = w_local − w_global
4. attack    ``ClientAttack.transform`` (attackers only)
5. defend    privacy (clip / local noise), the client-defense chain in order, then compression
6. reply     the payload (named numpy arrays) and the metrics the server may read

The Flower ClientApp (:mod:`simulator.flower.client_app`) is a thin adapter around :func:`client_step`: it
turns a Flower message into the inputs and the :class:`ClientReply` back into a message. The leakage
experiment calls the same stages (:func:`inspect_model`, :func:`defend_update`) on its single victim, and the
warm start calls :func:`client_step` with no plug-ins.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from attacks.base import ClientAttack
from defenses.base import ClientDefense
from simulator.context import ClientContext
from simulator.dp.mechanism import NoPrivacy, PrivacyMechanism
from simulator.flat import model_vector
from simulator.sketching.base import Compressor, Identity
from simulator.training import TrainStats, train_local

__all__ = [
    "ClientPlugins",
    "ClientReply",
    "ModelRefused",
    "client_step",
    "defend_update",
    "finish_client",
    "inspect_model",
]


class ModelRefused(RuntimeError):
    """A client defense refused the received model; the round records the client as failed with the reason."""


@dataclass(frozen=True)
class ClientPlugins:
    """The plug-ins a client runs; the defaults are a plain FedAvg client
    (no DP, no defense, dense update)."""

    privacy: PrivacyMechanism = field(default_factory=NoPrivacy)
    defenses: Sequence[ClientDefense] = ()
    compressor: Compressor = field(default_factory=Identity)
    attack: ClientAttack | None = None  # set only when this client acts as an attacker this round


@dataclass(frozen=True)
class ClientReply:
    """Step 6: what the client sends. ``metrics`` always holds ``num-examples``, ``train-loss``,
    ``local-steps`` and ``partition-id``, plus what the privacy mechanism reports (a record-level ε,
    the clip bit ...)."""

    payload: dict[str, np.ndarray]
    metrics: dict[str, float]


def inspect_model(defenses: Sequence[ClientDefense], model: nn.Module, ctx: ClientContext) -> str | None:
    """Before step 1: each client defense may refuse the received model (``model_inspection``); the first
    reason, or None."""
    return next((why for why in (d.inspect(model, ctx) for d in defenses) if why), None)


def defend_update(
    delta: torch.Tensor, ctx: ClientContext, plugins: ClientPlugins, config: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Step 5: privacy first (its clip and local noise), then the client-defense chain, then compression;
    returns the payload and the privacy mechanism's metrics."""
    delta, metrics = plugins.privacy.client_update(delta, ctx, dict(config))
    for d in plugins.defenses:
        delta = d.apply(delta, ctx)
    return plugins.compressor.encode(delta, ctx), dict(metrics)


def client_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ctx: ClientContext,
    plugins: ClientPlugins,
    *,
    config: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> ClientReply:
    """Steps 1-6 for one client. ``model`` holds the received global model (``ctx.global_vector``) and is
    trained in place; ``config`` is the server's round plan (the DP clip norm ...); ``generator`` overrides
    the training randomness (default ``ctx.generator("train")``). Raises :class:`ModelRefused` when a client
    defense refuses the received model."""
    config = dict(config or {})
    # 1. data (the received model is inspected before the client touches it)
    if any(d.needs_client_data for d in plugins.defenses):  # e.g. Soteria: the received model and own data
        ctx = dataclasses.replace(ctx, received_model=copy.deepcopy(model), data=(x, y))
    why = inspect_model(plugins.defenses, model, ctx)
    if why:
        raise ModelRefused(f"client {ctx.partition_id} refused the model: {why}")
    attack = plugins.attack
    hooks = None
    if attack is not None:
        x, y = attack.poison(x, y, ctx)
        hooks = attack.hooks(ctx)
    # 2. train (DP-SGD when the privacy mechanism takes over)
    out = plugins.privacy.client_train(model, x, y, ctx, config, hooks)
    metrics: dict[str, float] = {}
    if out is None:
        stats = train_local(
            model, x, y, ctx.train, generator=generator or ctx.generator("train"), hooks=hooks
        )
    else:
        stats, metrics = out
    return finish_client(model_vector(model, ctx.layout), stats, metrics, ctx, plugins, config)


def finish_client(
    trained: torch.Tensor,
    stats: TrainStats,
    metrics: dict[str, float],
    ctx: ClientContext,
    plugins: ClientPlugins,
    config: Mapping[str, Any],
) -> ClientReply:
    """Steps 3-6 from the trained weights (flat, ``ctx.layout``) and the training statistics: the part of the
    client step after training, shared by :func:`client_step` and the vectorised cohort
    (:func:`simulator.round.cohort.cohort_step`)."""
    metrics = dict(metrics)
    # 3. update
    delta = trained - ctx.global_vector
    # 4. attack
    if plugins.attack is not None:
        delta = plugins.attack.transform(delta, ctx)
    # 5. defend
    payload, pm = defend_update(delta, ctx, plugins, config)
    metrics.update(pm)
    # 6. reply
    metrics.update(
        {
            "num-examples": int(stats.num_examples),
            "train-loss": float(stats.loss),
            "local-steps": int(stats.steps),
            "partition-id": ctx.partition_id,
        }
    )
    return ClientReply(payload=payload, metrics=metrics)
