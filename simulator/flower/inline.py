"""The inline engine: the ServerApp drives the ClientApp in-process through a Flower ``Grid``.

No Ray, no start-up cost, sequential and deterministic; for tests, debugging, GPU boxes where
Ray does not fit, and fast sweeps. This is the one module that touches Flower internals
(message ids and the process's task identity, which the SuperLink would normally set); a test
pins the flwr version it was written against.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

import flwr
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

if TYPE_CHECKING:
    from flwr.supercore.run import Run

__all__ = ["FLWR_VERSION", "InlineGrid", "run_inline"]

FLWR_VERSION = "1.41.0"  # the version whose internals this module was written against
_SERVER_NODE_ID = 1  # flwr.common.constant.SUPERLINK_NODE_ID
_RUN_ID = 1


def _set_task_identity() -> None:
    # deferred: Flower internals needed only inside an inline-engine task
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id = 1
    TaskIdentity.run_id = _RUN_ID
    TaskIdentity.node_id = _SERVER_NODE_ID


class InlineGrid(Grid):
    """A Grid whose nodes are in-process ClientApp calls with one persistent Context per node."""

    def __init__(self, client_app: ClientApp, num_nodes: int, *, first_node_id: int = 1001) -> None:
        self.client_app = client_app
        self.contexts: dict[int, Context] = {}
        for pid in range(num_nodes):
            nid = first_node_id + pid
            self.contexts[nid] = Context(
                run_id=_RUN_ID,
                node_id=nid,
                node_config={"partition-id": pid, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:  # the inline engine has exactly one run
        self._run = run

    @property
    def run(self) -> Run | None:  # type: ignore[override]  # None: run_inline never calls set_run
        return getattr(self, "_run", None)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:  # deprecated in Flower; kept for the ABC
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = str(uuid.uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            nid = msg.metadata.dst_node_id
            if nid not in self.contexts:
                raise ValueError(f"no node {nid}")
            try:
                reply = self.client_app(msg, self.contexts[nid])
            except Exception as e:
                reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
            self._replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in list(message_ids) if m in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))


def run_inline(server_app: ServerApp, client_app: ClientApp, num_nodes: int) -> None:
    """Run ``server_app`` against ``num_nodes`` in-process nodes."""
    if flwr.__version__ != FLWR_VERSION:  # pragma: no cover - guarded by tests/test_inline_engine.py
        raise RuntimeError(f"the inline engine was written for flwr {FLWR_VERSION}, found {flwr.__version__}")
    _set_task_identity()
    grid = InlineGrid(client_app, num_nodes)
    ctx = Context(run_id=_RUN_ID, node_id=_SERVER_NODE_ID, node_config={}, state=RecordDict(), run_config={})
    server_app(grid, ctx)
