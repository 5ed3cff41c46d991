"""Flower messages in, round-core candidates out: the adapter in front of step 7 (validation)."""

from __future__ import annotations

from flwr.app import Message

from simulator.round.validate import Candidate

__all__ = ["unpack"]


def unpack(msg: Message, partition_of: dict[int, int]) -> Candidate:
    """Read one reply without trusting it: a client error, a message that cannot be read, or its arrays and
    metrics (checked later by :func:`simulator.round.validate_replies`)."""
    pid = partition_of.get(msg.metadata.src_node_id, -1)
    if msg.has_error():
        return Candidate(pid, failed=str(msg.error.reason))
    try:
        content = msg.content
        if "arrays" not in content or "metrics" not in content:
            raise ValueError(f"reply lacks {'arrays' if 'arrays' not in content else 'metrics'}")
        rec = content["arrays"]
        # untrusted: a record that is not an ArrayRecord fails here and is rejected
        arrays = {k: v.numpy() for k, v in rec.items()}  # type: ignore[union-attr]
        metrics = dict(content["metrics"])
    except Exception as e:
        return Candidate(pid, malformed=str(e))
    return Candidate(pid, arrays=arrays, metrics=metrics)
