"""Warm start: begin round 1 from a trained global model instead of a random one.

The backdoor papers attack a model that has already converged: OOD_FL (Wang et al., NeurIPS 2020) and
the Multi-metrics code (Huang et al., ICCV 2023) load a checkpoint pre-trained without attackers
(``READ_CKPT``), Bagdasaryan et al. (AISTATS 2020) replace a model "close to convergence". A robust
aggregator that keeps 3 of 10 updates costs far more accuracy from a random start than from such a
checkpoint, so defense comparisons need the same starting point the papers use.

``[model.warm_start] rounds = N`` pre-trains here with plain FedAvg on the scenario's own clients and
federation settings (no attack, no defense, no DP, no compression), deterministically from the seed, and
caches the weights on disk (``$PRIVSIM_CACHE/warm_start`` or ``~/.cache/privsim/warm_start``) under a
digest of everything that changes them, partitions included. ``checkpoint = "model.pt"`` loads a saved
``state_dict`` instead.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from simulator.context import ClientContext, RoundContext, derive_seed, make_generator
from simulator.data import FederatedData
from simulator.flat import layout_of, load_vector, model_vector
from simulator.round import ClientPlugins, ServerPlugins, ValidReply, client_step, server_step
from simulator.scenario import Scenario
from simulator.training import LocalTrainConfig, evaluate

__all__ = ["apply_warm_start", "cache_dir", "fedavg_pretrain", "warm_start_key"]

_FORMAT = 2  # 2: pre-trained through the round core (the update is the mean of Δ, not of w)
log = logging.getLogger("privsim.warm_start")


def cache_dir() -> Path:
    """``$PRIVSIM_CACHE/warm_start`` if the variable is set, else ``~/.cache/privsim/warm_start``."""
    env = os.environ.get("PRIVSIM_CACHE")
    return (Path(env).expanduser() if env else Path("~/.cache/privsim").expanduser()) / "warm_start"


def cohort_size(s: Scenario) -> int:
    """Clients per warm-up round: the scenario's expected cohort, rounded (at least one)."""
    return max(1, min(s.data.num_clients, round(s.num_sampled_expected)))


def warm_start_key(s: Scenario, data: FederatedData, train: LocalTrainConfig) -> str:
    """Digest of what determines the pre-trained weights: model, local training, cohort size, seed,
    rounds and the exact client partitions (an edge-case attacker's reserved examples change them);
    not the number of measured rounds nor anything the warm-up ignores (attacks, defenses, DP)."""
    parts = hashlib.sha256()
    for idx in data.client_indices:
        parts.update(np.asarray(idx, dtype=np.int64).tobytes())
        parts.update(b"|")
    blob = {
        "format": _FORMAT,
        "dataset": s.data.dataset,
        "dataset_params": s.data.params,
        "test_fraction": s.data.test_fraction,
        "max_examples": s.data.max_examples,
        "model": s.model.name,
        "model_params": s.model.params,
        "train": asdict(train),
        "cohort": cohort_size(s),
        "seed": s.seed,
        "rounds": s.model.warm_start.rounds if s.model.warm_start else None,
        "partitions": parts.hexdigest(),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]


def fedavg_pretrain(
    model: nn.Module, data: FederatedData, train: LocalTrainConfig, *, rounds: int, cohort: int, seed: int
) -> None:
    """Plain FedAvg for ``rounds`` rounds, in place, through the round core with its default plug-ins (no
    DP, no defense, dense updates, the FedAvg aggregator): each round samples ``cohort`` clients uniformly
    without replacement (seeded), runs :func:`simulator.round.client_step` on each and
    :func:`simulator.round.server_step` on their replies. The floating state (parameters and buffers such as
    BatchNorm statistics, :func:`simulator.flat.layout_of`) is averaged by example count."""
    rng = np.random.default_rng(derive_seed(seed, "warm_start", "sampling"))
    layout = layout_of(model)
    local = copy.deepcopy(model)
    client, server = ClientPlugins(), ServerPlugins()
    for rnd in range(1, rounds + 1):
        chosen = np.sort(rng.choice(data.num_clients, size=cohort, replace=False))
        glob = model_vector(model, layout)
        replies = []
        for pid in (int(p) for p in chosen):
            x, y = data.client(pid)
            if x.shape[0] == 0:
                continue
            load_vector(local, glob, layout)
            ctx = ClientContext(
                partition_id=pid,
                server_round=rnd,
                seed=seed,
                num_examples=int(x.shape[0]),
                global_vector=glob,
                layout=layout,
                train=train,
                num_clients=data.num_clients,
                expected_clients_per_round=float(cohort),
            )
            reply = client_step(
                local, x, y, ctx, client, generator=make_generator(seed, "warm_start", rnd, pid)
            )
            replies.append(
                ValidReply(
                    pid,
                    int(x.shape[0]),
                    {k: torch.from_numpy(v) for k, v in reply.payload.items()},
                    reply.metrics,
                    0,
                )
            )
        if not replies:
            continue
        rctx = RoundContext(
            server_round=rnd,
            seed=seed,
            global_vector=glob,
            layout=layout,
            client_ids=tuple(r.partition_id for r in replies),
            num_examples=tuple(r.num_examples for r in replies),
            num_clients=data.num_clients,
            expected_clients_per_round=float(cohort),
        )
        out = server_step(replies, rctx, server, server_lr=1.0)
        if out.new_global is not None:
            load_vector(model, out.new_global, layout)


def _load_checkpoint(model: nn.Module, path: str) -> None:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"model.warm_start.checkpoint: no file {str(p)!r}")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"model.warm_start.checkpoint {str(p)!r} does not fit model {model.__class__.__name__}: {first}"
        ) from None


def apply_warm_start(
    model: nn.Module, s: Scenario, data: FederatedData, train: LocalTrainConfig
) -> dict[str, Any] | None:
    """Load the warm-start weights into ``model`` (in place); returns what summary.json records, or
    None without a warm start."""
    ws = s.model.warm_start
    if ws is None:
        return None
    if ws.checkpoint is not None:
        _load_checkpoint(model, ws.checkpoint)
        info: dict[str, Any] = {"checkpoint": str(Path(ws.checkpoint).expanduser())}
    else:
        assert ws.rounds is not None
        key = warm_start_key(s, data, train)
        path = cache_dir() / f"{key}.pt"
        cached = path.is_file()
        if cached:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            log.warning(
                "warm start: %d rounds of attack-free FedAvg (cached afterwards in %s)", ws.rounds, path
            )
            fedavg_pretrain(model, data, train, rounds=ws.rounds, cohort=cohort_size(s), seed=s.seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
            tmp.replace(path)  # atomic: parallel grid cells never read a half-written file
        info = {"rounds": ws.rounds, "cached": cached, "key": key}
    acc, _ = evaluate(model, data.test.x, data.test.y)
    info["main_accuracy"] = acc
    return info
