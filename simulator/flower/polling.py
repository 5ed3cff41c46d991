"""Send a round's messages and collect the replies without waiting on Flower's fixed poll interval.

``Grid.send_and_receive`` in flwr 1.41 sleeps a fixed interval between pulls: 0.1 s on the simulation
runtime's in-memory grid, 3 s on a deployment's grid. A round whose replies are ready after 30 ms then
takes 100 ms (3 s on a deployment). :func:`send_and_receive` pushes the messages and pulls with a short,
growing interval instead (1 ms, ×1.5 per empty pull, at most ``max_interval``), so a round ends within a few
milliseconds of its last reply; the inline engine's grid answers synchronously and is called directly.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from simulator.flower.inline import InlineGrid

__all__ = ["send_and_receive"]


def send_and_receive(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout: float | None,
    first_interval: float = 0.001,
    max_interval: float = 0.1,
) -> list[Message]:
    """Push ``messages`` and pull their replies until every message has one or ``timeout`` seconds have
    passed (None: no limit); returns the replies received, in arrival order."""
    if isinstance(grid, InlineGrid):
        return list(grid.send_and_receive(messages, timeout=timeout))
    ids = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    interval = first_interval
    out: list[Message] = []
    while ids:
        got = list(grid.pull_messages(ids))
        out.extend(got)
        ids.difference_update(m.metadata.reply_to_message_id for m in got)
        if not ids:
            break
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        if got:
            interval = first_interval  # replies are arriving: keep pulling closely
        wait = interval if deadline is None else min(interval, deadline - now)
        time.sleep(wait)
        interval = min(interval * 1.5, max_interval)
    return out
