"""Flower messages in, round-core candidates out: the adapter in front of step 7 (validation).

A node may play several clients (:mod:`simulator.flower.nodes`), so one reply carries each client's arrays
under ``"<partition>/<name>"``, its metrics under ``"<partition>/<metric>"``, and a ``clients`` config
record listing the partitions it answers for and the reason of each client that failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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
    out = []
    for p in asked:
        pre = f"{p}/"
        why = clients.get(f"failed-{p}")
        if why is not None:
            out.append(Candidate(p, failed=str(why)))
            continue
        arrays = {k[len(pre) :]: v for k, v in arrays_all.items() if k.startswith(pre)}
        metrics = {k[len(pre) :]: v for k, v in metrics_all.items() if k.startswith(pre)}
        if not arrays and not metrics:
            out.append(Candidate(p, failed=f"the node's reply has no answer for client {p}"))
            continue
        out.append(Candidate(p, arrays=arrays, metrics=metrics))
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
