"""Between steps 6 and 7 of a round: the deadline, in simulated time.

With a latency model (``[federation.latency]``, :mod:`simulator.latency`) every reply that arrived is timed:
download of the global model + the client's ``local-steps`` × its seconds per step + upload of its real
payload. Replies slower than ``federation.deadline_s`` are dropped after training, before validation, as a
server that closes its reporting window at the deadline ignores late devices (Bonawitz et al., "Towards
Federated Learning at Scale: System Design", MLSys 2019). Late clients are not an error: they are recorded in
the round (``late``), and ``min_replies`` applies to what is left.

The round's simulated duration is the slowest on-time reply, or the deadline when the server had to wait for
it (a reply came late, or a sampled client never answered). Without a deadline a client that never answers
(``federation.dropout``) is taken as known absent: it does not lengthen the round.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from simulator.latency import LatencyModel
from simulator.round.validate import Candidate

__all__ = ["apply_deadline", "client_seconds"]


def _steps(c: Candidate) -> int | None:
    v = (c.metrics or {}).get("local-steps")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or v != int(v):
        return None
    return int(v)


def _timed(c: Candidate) -> bool:
    """A reply with a payload from a known sender (errors, unreadable replies and strangers go to step 7)."""
    return c.failed is None and c.malformed is None and c.arrays is not None and c.partition_id >= 0


def client_seconds(
    c: Candidate, latency_model: LatencyModel, server_round: int, bytes_down: int
) -> float | None:
    """Simulated seconds of one reply; None if it cannot be timed (no payload or no valid ``local-steps``)."""
    steps = _steps(c)
    if not _timed(c) or steps is None:
        return None
    assert c.arrays is not None  # _timed checked it
    bytes_up = int(sum(int(getattr(a, "nbytes", 0)) for a in c.arrays.values()))
    return latency_model.seconds(
        c.partition_id, server_round, steps=steps, bytes_up=bytes_up, bytes_down=bytes_down
    )


def apply_deadline(
    candidates: Sequence[Candidate],
    latency_model: LatencyModel | None,
    server_round: int,
    bytes_down_per_client: int | Mapping[int, int],
    deadline: float | None,
    *,
    missing: int = 0,
) -> tuple[list[Candidate], list[int], float | None]:
    """``(on_time, late, simulated_seconds)``: the replies that reached the server by ``deadline`` (in
    their order), the partition ids of those that did not (sorted), and the round's simulated duration.

    ``bytes_down_per_client``: what each client downloaded (one number for a broadcast, or per partition).
    ``missing``: sampled clients that never answered (with a deadline the server waits for them until it).
    Without a latency model nothing is timed: ``(candidates, [], None)``. A reply with a payload but no valid
    ``local-steps`` metric cannot be timed and is passed on as malformed (validation rejects and records it).
    """
    if latency_model is None:
        return list(candidates), [], None
    on_time: list[Candidate] = []
    late: list[int] = []
    times: list[float] = []
    for c in candidates:
        if not _timed(c):
            on_time.append(c)
            continue
        down = (
            bytes_down_per_client[c.partition_id]
            if isinstance(bytes_down_per_client, Mapping)
            else bytes_down_per_client
        )
        t = client_seconds(c, latency_model, server_round, int(down))
        if t is None:
            steps = (c.metrics or {}).get("local-steps")
            why = f"local-steps is {steps!r}; the latency model needs the client's steps (an integer >= 0)"
            on_time.append(dataclasses.replace(c, malformed=why))
        elif deadline is not None and t > deadline:
            late.append(c.partition_id)
        else:
            on_time.append(c)
            times.append(t)
    waited = deadline is not None and (bool(late) or missing > 0)
    simulated = float(deadline) if waited and deadline is not None else max(times, default=0.0)
    return on_time, sorted(late), simulated
