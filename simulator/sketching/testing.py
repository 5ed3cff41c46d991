"""Run a compressor outside Flower: contexts for one client or round, and a few rounds of encode → decode.

Used by the sketching tests and the benchmark; it follows the strategy's steps 5-8 (encode on each client with its
persistent state, validate against the spec, decode per client or in sketch space) without training or Flower.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from simulator.context import ClientContext, RoundContext
from simulator.flat import Layout
from simulator.sketching.base import ArraySpec, Compressor
from simulator.training import LocalTrainConfig

__all__ = ["check_payload", "client_context", "flat_layout", "round_context", "run_round"]


def flat_layout(dim: int) -> Layout:
    """A one-tensor layout of d entries."""
    return Layout(("w",), ((dim,),))


def client_context(layout: Layout, *, partition_id: int = 0, server_round: int = 1, seed: int = 0,
                   state: dict[str, np.ndarray] | None = None, num_clients: int = 1) -> ClientContext:
    """A client's context with a zero global model; ``state`` is kept by reference (error-feedback memory)."""
    return ClientContext(partition_id=partition_id, server_round=server_round, seed=seed, num_examples=10,
                         global_vector=torch.zeros(layout.dim), layout=layout, train=LocalTrainConfig(),
                         num_clients=num_clients, expected_clients_per_round=float(num_clients),
                         state=state if state is not None else {})


def round_context(layout: Layout, *, client_ids: Sequence[int], server_round: int = 1,
                  seed: int = 0) -> RoundContext:
    """The server's context of a round with the given accepted clients (10 examples each)."""
    n = len(client_ids)
    return RoundContext(server_round=server_round, seed=seed, global_vector=torch.zeros(layout.dim), layout=layout,
                        client_ids=tuple(client_ids), num_examples=(10,) * n, num_clients=max(n, 1),
                        expected_clients_per_round=float(n))


def check_payload(payload: dict[str, np.ndarray], spec: dict[str, ArraySpec]) -> None:
    """Raise AssertionError unless ``payload`` has exactly the spec's names, shapes and dtypes."""
    assert set(payload) == set(spec), f"payload keys {sorted(payload)} != spec keys {sorted(spec)}"
    for name, sp in spec.items():
        a = payload[name]
        assert isinstance(a, np.ndarray), f"{name}: {type(a)} is not a numpy array"
        assert tuple(a.shape) == tuple(sp.shape), f"{name}: shape {a.shape} != {sp.shape}"
        assert str(a.dtype) == sp.dtype, f"{name}: dtype {a.dtype} != {sp.dtype}"


def run_round(compressor: Compressor, deltas: torch.Tensor, *, layout: Layout, server_round: int = 1,
              seed: int = 0, states: dict[int, dict[str, np.ndarray]] | None = None,
              weights: torch.Tensor | None = None) -> tuple[list[dict[str, np.ndarray]], torch.Tensor]:
    """One round for clients 0..n−1 with updates ``deltas`` (n, d): (payloads, decoded).

    ``decoded`` is (n, d) per-client estimates, or (d,) for a compressor that aggregates in sketch space.
    ``states`` maps a client id to its persistent state and is updated in place.
    """
    states = states if states is not None else {}
    spec = compressor.spec(layout, server_round)
    payloads = []
    for i, delta in enumerate(deltas):
        ctx = client_context(layout, partition_id=i, server_round=server_round, seed=seed,
                             state=states.setdefault(i, {}), num_clients=len(deltas))
        p = compressor.encode(delta, ctx)
        check_payload(p, spec)
        payloads.append(p)
    tensors = [{k: torch.from_numpy(np.array(v)) for k, v in p.items()} for p in payloads]
    rctx = round_context(layout, client_ids=range(len(deltas)), server_round=server_round, seed=seed)
    if compressor.aggregates_in_sketch_space:
        w = weights if weights is not None else torch.ones(len(deltas))
        return payloads, compressor.decode_aggregate(tensors, w, rctx)
    return payloads, compressor.decode(tensors, rctx)
