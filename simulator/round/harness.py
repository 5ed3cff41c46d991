"""A compressor through the round core without training or Flower:
steps 5 (encode), 7 (validate) and 8 (decode).

For the sketching tests and benchmarks: each client encodes its given update with its persistent state
(error-feedback memory) through :func:`simulator.round.defend_update`, the payloads are validated against the
compressor's spec by :func:`simulator.round.validate_replies`, and the server decodes them with
:func:`simulator.round.decode_updates`.
"""

from __future__ import annotations

import numpy as np
import torch

from simulator.flat import Layout
from simulator.round.client_step import ClientPlugins, defend_update
from simulator.round.server_step import decode_updates
from simulator.round.validate import Candidate, validate_replies
from simulator.sketching.base import Compressor
from simulator.sketching.testing import client_context, round_context

__all__ = ["run_round"]


def run_round(
    compressor: Compressor,
    deltas: torch.Tensor,
    *,
    layout: Layout,
    server_round: int = 1,
    seed: int = 0,
    states: dict[int, dict[str, np.ndarray]] | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[list[dict[str, np.ndarray]], torch.Tensor]:
    """One round for clients 0..n−1 with updates ``deltas`` (n, d): (payloads, decoded).

    ``decoded`` is (n, d) per-client estimates, or (d,) for a compressor that aggregates in sketch space.
    ``states`` maps a client id to its persistent state and is updated in place. A payload that fails
    validation raises AssertionError with the reason.
    """
    states = states if states is not None else {}
    plugins = ClientPlugins(compressor=compressor)
    payloads = []
    for i, delta in enumerate(deltas):
        ctx = client_context(
            layout,
            partition_id=i,
            server_round=server_round,
            seed=seed,
            state=states.setdefault(i, {}),
            num_clients=len(deltas),
        )
        payloads.append(defend_update(delta, ctx, plugins, {})[0])
    verdicts = validate_replies(
        [Candidate(i, p, {"num-examples": 10}) for i, p in enumerate(payloads)],
        spec=compressor.spec(layout, server_round),
        expected=set(range(len(deltas))),
    )
    assert not verdicts.rejected, f"payloads rejected: {verdicts.rejected}"
    rctx = round_context(layout, client_ids=range(len(deltas)), server_round=server_round, seed=seed)
    w = weights if weights is not None else torch.ones(len(deltas))
    updates, summed = decode_updates(compressor, [r.arrays for r in verdicts.valid], w, rctx)
    decoded = summed if summed is not None else updates
    assert decoded is not None
    return payloads, decoded
