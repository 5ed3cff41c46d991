"""The simulation runtime's message pick-up (:mod:`simulator.flower.polling`): :func:`wake_on_store` moves
every message the server stores to the runtime's queue when it is stored, not at the next 0.1 s look, drains
a backlog, stops with the runtime and leaves the LinkState as it found it. The idle interval is set to a
minute in these tests, so a delivery within the bounded wait can only come from the wake-up."""

from __future__ import annotations

import inspect
import sys
import threading
import types
from queue import Empty, Queue

import pytest

from simulator.flower import polling
from simulator.flower.polling import prompt_simulation_dispatch, wake_on_store


class _State:
    """The two LinkState methods the pick-up uses: messages stored per node, handed out ``limit`` at once."""

    def __init__(self) -> None:
        self.pending: dict[int, list[str]] = {}
        self.lock = threading.Lock()

    def store_message_ins(self, message: tuple[int, str]) -> str:
        node, text = message
        with self.lock:
            self.pending.setdefault(node, []).append(text)
        return text

    def get_message_ins(self, node_id: int, limit: int) -> list[str]:
        with self.lock:
            mine = self.pending.get(node_id, [])
            out, self.pending[node_id] = mine[:limit], mine[limit:]
        return out


def _start(state: _State, nodes: dict[int, int]) -> tuple[Queue, threading.Event, threading.Thread]:
    queue: Queue = Queue()
    stop = threading.Event()
    th = threading.Thread(
        target=wake_on_store, args=(state, queue, nodes, stop), kwargs={"idle": 60.0}, daemon=True
    )
    th.start()
    return queue, stop, th


def _stop(stop: threading.Event, th: threading.Thread, state: _State) -> None:
    stop.set()
    state.store_message_ins((0, "bye"))  # wakes the loop, which then sees the stop
    th.join(timeout=10)
    assert not th.is_alive()


def test_a_stored_message_is_picked_up_when_stored() -> None:
    state = _State()
    queue, stop, th = _start(state, {0: 0, 1: 1})
    try:
        for _ in range(3):  # the loop is asleep (idle 60 s) before each store
            threading.Event().wait(0.05)
            state.store_message_ins((1, "round"))
            assert queue.get(timeout=10) == "round"
    finally:
        _stop(stop, th, state)


def test_a_backlog_is_drained_without_waiting() -> None:
    state = _State()
    queue, stop, th = _start(state, {0: 0, 1: 1})
    try:
        for i in range(4):  # get_message_ins hands out one message per node per look
            state.store_message_ins((0, f"a{i}"))
        got = [queue.get(timeout=10) for _ in range(4)]
        assert got == ["a0", "a1", "a2", "a3"]
        with pytest.raises(Empty):
            queue.get_nowait()
    finally:
        _stop(stop, th, state)


def test_stopping_restores_the_state() -> None:
    state = _State()
    _, stop, th = _start(state, {0: 0})
    threading.Event().wait(0.05)
    assert "store_message_ins" in vars(state)  # wrapped while the runtime runs
    _stop(stop, th, state)
    assert "store_message_ins" not in vars(state)


def test_the_replacement_has_flowers_signature() -> None:
    """Installed only where Flower's runtime is loaded, in place of a function with the same parameters."""
    from flwr.server.superlink.fleet.vce import vce_api

    theirs = list(inspect.signature(vce_api.add_messages_to_queue).parameters)
    ours = [p for p in inspect.signature(wake_on_store).parameters if p != "idle"]
    assert ours == theirs == ["state", "queue", "nodes_mapping", "f_stop"]


def test_installed_only_where_the_runtime_is_loaded(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, polling._VCE, raising=False)
    assert prompt_simulation_dispatch() is False
    fake = types.ModuleType(polling._VCE)
    fake.add_messages_to_queue = lambda *a: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, polling._VCE, fake)
    assert prompt_simulation_dispatch() is True
    assert fake.add_messages_to_queue is wake_on_store  # type: ignore[attr-defined]
