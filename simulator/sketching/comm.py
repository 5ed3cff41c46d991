"""Communication accounting: bytes a client sends per round and the compression ratio, read from the spec.

The spec is the contract the server enforces (:meth:`~simulator.sketching.base.Compressor.spec`), so the bytes
computed here are exactly the payload bytes of a valid reply (array data only; Flower's message framing and
metrics are not counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.flat import Layout
from simulator.sketching.base import ArraySpec, Compressor

__all__ = ["CommCost", "communication_cost", "dense_bytes", "payload_bytes"]


@dataclass(frozen=True)
class CommCost:
    """Upload cost of one client in one round."""

    bytes_up: int  # payload bytes per client
    dense_bytes: int  # the uncompressed float32 update, 4·d
    ratio: float  # dense_bytes / bytes_up (> 1: compression)


def payload_bytes(spec: dict[str, ArraySpec]) -> int:
    """Σ over the payload's arrays of (number of entries × item size).

    >>> payload_bytes({"indices": ArraySpec((10,), "int32"), "values": ArraySpec((10,))})
    80
    """
    return int(sum(int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize for a in spec.values()))


def dense_bytes(layout: Layout) -> int:
    """Bytes of the dense float32 update."""
    return 4 * layout.dim


def communication_cost(compressor: Compressor, layout: Layout, server_round: int = 1) -> CommCost:
    """Bytes up per client and the compression ratio of ``compressor`` for a model with ``layout``."""
    up = payload_bytes(compressor.spec(layout, server_round))
    dense = dense_bytes(layout)
    return CommCost(bytes_up=up, dense_bytes=dense, ratio=dense / up if up else float("inf"))
