"""A round context for aggregation tests, shared by several test modules."""

from __future__ import annotations

import torch

from simulator.context import RoundContext
from simulator.flat import Layout


def make_ctx(
    n: int, d: int, *, server_round: int = 1, ids: list[int] | None = None, seed: int = 17
) -> RoundContext:
    """A round context for ``n`` clients of one example each and a ``d``-parameter model at zero."""
    ids = ids if ids is not None else list(range(n))
    return RoundContext(
        server_round=server_round,
        seed=seed,
        global_vector=torch.zeros(d),
        layout=Layout(("w",), ((d,),)),
        client_ids=tuple(ids),
        num_examples=(1,) * n,
        num_clients=100,
        expected_clients_per_round=float(n),
    )
