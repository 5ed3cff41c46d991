"""Send a round's messages and collect the replies without waiting on Flower's fixed poll interval.

``Grid.send_and_receive`` in flwr 1.41 sleeps a fixed interval between pulls: 0.1 s on the simulation
runtime's in-memory grid, 3 s on a deployment's grid. A round whose replies are ready after 30 ms then
takes 100 ms (3 s on a deployment). :func:`send_and_receive` pushes the messages and pulls with a short,
growing interval instead (1 ms, ×1.5 per empty pull, at most ``max_interval``), so a round ends within a few
milliseconds of its last reply; the inline engine's grid answers synchronously and is called directly.

The other direction has the same wait: the simulation runtime (``vce_api.add_messages_to_queue``) looks
for new messages every 0.1 s, so each round's messages sit 50 ms on average before a node plays them.
:func:`prompt_simulation_dispatch` replaces that loop with one that the server's ``store_message_ins``
wakes up (and still looks every 0.1 s), for the simulation runtime running in this process.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from queue import Queue
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from simulator.flower.inline import InlineGrid

__all__ = ["prompt_simulation_dispatch", "send_and_receive", "wake_on_store"]


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


_VCE = "flwr.server.superlink.fleet.vce.vce_api"


def wake_on_store(
    state: Any,
    queue: Queue[Message],
    nodes_mapping: dict[int, int],
    f_stop: threading.Event,
    *,
    idle: float = 0.1,
) -> None:
    """Flower's ``add_messages_to_queue`` (move each node's pending messages from the LinkState to the
    runtime's queue until ``f_stop``), woken up by every ``state.store_message_ins`` instead of sleeping
    0.1 s between looks; it still looks every ``idle`` seconds, and drains a backlog without waiting."""
    wake = threading.Event()
    store = state.store_message_ins

    def store_and_wake(*args: Any, **kwargs: Any) -> Any:
        try:
            return store(*args, **kwargs)
        finally:
            wake.set()

    state.store_message_ins = store_and_wake
    try:
        while not f_stop.is_set():
            wake.clear()
            found = False
            for node_id in list(nodes_mapping.keys()):
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
                    found = True
            if not found:
                wake.wait(idle)
    finally:
        del state.store_message_ins  # the class's method again


def prompt_simulation_dispatch() -> bool:
    """Have Flower's simulation runtime in this process pick up the server's messages as soon as they are
    stored (:func:`wake_on_store`). Only where the runtime is already loaded (a ServerApp under
    ``flwr-simulation``); takes effect for a runtime started after the call. Returns whether it did."""
    vce = sys.modules.get(_VCE)
    if vce is None or not hasattr(vce, "add_messages_to_queue"):
        return False
    setattr(vce, "add_messages_to_queue", wake_on_store)  # noqa: B010 (a module attribute mypy cannot see)
    return True
