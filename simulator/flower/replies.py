"""Flower messages in, round-core candidates out: the adapter in front of step 7 (validation).

A node may play several clients (:mod:`simulator.flower.nodes`), so one reply carries every client's arrays
and metrics (:func:`simulator.flower.client_app.pack_reply`): stacked under ``"*/<name>"`` (one row per
answering client) when all share a shape, else under ``"<partition>/<name>"``; and a ``clients`` config
record listing the partitions it answers for and the reason of each client that failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Message

from simulator.round.validate import Candidate

__all__ = ["unpack", "unpack_replies"]


def unpack(msg: Message, asked: list[int]) -> list[Candidate]:
    """Read one node's reply without trusting it: one candidate per partition the node was asked to train
    (a client error, a reply that cannot be read, a client missing from it, or its arrays and metrics, checked
    later by :func:`simulator.round.validate_replies`)."""
    if msg.has_error():
        return [Candidate(p, failed=str(msg.error.reason)) for p in asked]
    try:
        content = msg.content
        for key in ("arrays", "metrics", "clients"):
            if key not in content:
                raise ValueError(f"reply lacks {key}")
        clients = dict(content["clients"])  # type: ignore[arg-type]  # untrusted: a wrong type fails here
        arrays_rec, metrics_rec = content["arrays"], content["metrics"]
        arrays_all = {k: v.numpy() for k, v in arrays_rec.items()}  # type: ignore[union-attr]
        metrics_all = dict(metrics_rec)  # type: ignore[arg-type]
    except Exception as e:
        return [Candidate(p, malformed=str(e)) for p in asked]
    answered = [p for p in asked if clients.get(f"failed-{p}") is None]
    try:
        arrays_of = _per_client(arrays_all, answered)
        metrics_of = _per_client(metrics_all, answered)
    except Exception as e:  # untrusted: a stacked entry of the wrong length or kind
        return [Candidate(p, malformed=str(e)) for p in asked]
    out = []
    for p in asked:
        why = clients.get(f"failed-{p}")
        if why is not None:
            out.append(Candidate(p, failed=str(why)))
            continue
        arrays, metrics = arrays_of[p], metrics_of[p]
        if not arrays and not metrics:
            out.append(Candidate(p, failed=f"the node's reply has no answer for client {p}"))
            continue
        out.append(Candidate(p, arrays=arrays, metrics=metrics))
    return out


def _per_client(record: Mapping[str, Any], answered: list[int]) -> dict[int, dict[str, Any]]:
    """Split a reply's record by client: ``"*/<name>"`` holds one row (or list entry) per answering client in
    order, ``"<partition>/<name>"`` one client's value; a stacked entry with the wrong number of rows makes
    the whole reply unreadable (ValueError)."""
    out: dict[int, dict[str, Any]] = {p: {} for p in answered}
    for key, value in record.items():
        head, sep, name = key.partition("/")
        if not sep:
            continue
        if head == "*":
            if len(value) != len(answered):
                raise ValueError(f"{key!r} has {len(value)} rows for {len(answered)} answering clients")
            for p, row in zip(answered, value):
                out[p][name] = row
        elif head.lstrip("-").isdigit() and int(head) in out:
            out[int(head)][name] = value
    return out


def unpack_replies(replies: Iterable[Message], sent: Mapping[int, list[int]]) -> list[Candidate]:
    """Every client's candidate from the nodes' replies (``sent``: node id → the partitions it was asked to
    train); a reply from a node that was asked nothing is ignored, a node that never replied gives none."""
    out: list[Candidate] = []
    for msg in replies:
        asked = sent.get(msg.metadata.src_node_id)
        if asked:
            out.extend(unpack(msg, asked))
    return out
