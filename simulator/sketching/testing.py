"""Contexts for running a compressor outside Flower: one client's, one round's, and a payload check.

Used by the sketching tests and the benchmark; :func:`simulator.round.harness.run_round` runs rounds of encode
→ validate → decode through the round core with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from simulator.context import ClientContext, RoundContext
from simulator.flat import Layout
from simulator.sketching.base import ArraySpec
from simulator.training import LocalTrainConfig

__all__ = ["check_payload", "client_context", "flat_layout", "round_context"]


def flat_layout(dim: int) -> Layout:
    """A one-tensor layout of d entries."""
    return Layout(("w",), ((dim,),))


def client_context(
    layout: Layout,
    *,
    partition_id: int = 0,
    server_round: int = 1,
    seed: int = 0,
    state: dict[str, np.ndarray] | None = None,
    num_clients: int = 1,
) -> ClientContext:
    """A client's context with a zero global model; ``state`` is kept by reference (error-feedback memory)."""
    return ClientContext(
        partition_id=partition_id,
        server_round=server_round,
        seed=seed,
        num_examples=10,
        global_vector=torch.zeros(layout.dim),
        layout=layout,
        train=LocalTrainConfig(),
        num_clients=num_clients,
        expected_clients_per_round=float(num_clients),
        state=state if state is not None else {},
    )


def round_context(
    layout: Layout, *, client_ids: Sequence[int], server_round: int = 1, seed: int = 0
) -> RoundContext:
    """The server's context of a round with the given accepted clients (10 examples each)."""
    n = len(client_ids)
    return RoundContext(
        server_round=server_round,
        seed=seed,
        global_vector=torch.zeros(layout.dim),
        layout=layout,
        client_ids=tuple(client_ids),
        num_examples=(10,) * n,
        num_clients=max(n, 1),
        expected_clients_per_round=float(n),
    )


def check_payload(payload: dict[str, np.ndarray], spec: dict[str, ArraySpec]) -> None:
    """Raise AssertionError unless ``payload`` has exactly the spec's names, shapes and dtypes."""
    assert set(payload) == set(spec), f"payload keys {sorted(payload)} != spec keys {sorted(spec)}"
    for name, sp in spec.items():
        a = payload[name]
        assert isinstance(a, np.ndarray), f"{name}: {type(a)} is not a numpy array"
        assert tuple(a.shape) == tuple(sp.shape), f"{name}: shape {a.shape} != {sp.shape}"
        assert str(a.dtype) == sp.dtype, f"{name}: dtype {a.dtype} != {sp.dtype}"
