"""The inline engine: the ServerApp drives the ClientApp through a Flower ``Grid`` without Ray.

No start-up cost and deterministic; for tests, debugging, GPU boxes where Ray does not fit, and fast sweeps.
Each node is a ClientApp call with its own persistent Context. A round's train messages run in this process,
or, when the run has several ``workers`` and a round's client work has been long enough to pay for starting
them (auto, measured on the rounds so far), by this process and a pool of worker processes: the round's
clients are split between them by their work (``train_split``; each client's state travels with it and comes
back to its node's Context), so the results do not depend on which process played a client.
This is the one module that touches Flower internals (message ids and the process's task identity, which the
SuperLink would normally set); a test pins the flwr version it was written against.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import flwr
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

if TYPE_CHECKING:
    from flwr.supercore.run import Run

__all__ = ["FLWR_VERSION", "ClientPool", "InlineGrid", "run_inline"]

FLWR_VERSION = "1.41.0"  # the version whose internals this module was written against
_SERVER_NODE_ID = 1  # flwr.common.constant.SUPERLINK_NODE_ID
_RUN_ID = 1


def _set_task_identity() -> None:
    # deferred: Flower internals needed only inside an inline-engine task
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id = 1
    TaskIdentity.run_id = _RUN_ID
    TaskIdentity.node_id = _SERVER_NODE_ID


TrainMany = Callable[[list[tuple[Message, Context]]], list[Message]]
RunTasks = Callable[[list[Callable[[], Any]], list[float]], list[Any]]
TrainSplit = Callable[[list[tuple[Message, Context]], int, RunTasks], list[Message]]


def _call(app: ClientApp, msg: Message, context: Context) -> Message:
    try:
        return app(msg, context)
    except Exception as e:
        return Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg)


def _clients_in(msg: Message) -> int:
    """How many clients a train message asks its node to play (1 when it does not say)."""
    try:
        return max(1, len(msg.content["config"]["partitions"]))  # type: ignore[arg-type]
    except Exception:
        return 1


class _Worker:
    """One ``python -m simulator.flower.pool_worker`` process and its pipes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simulator.flower.pool_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def call(self, task: Callable[[], Any]) -> Any:
        """``task()`` in the worker: its result, or an exception saying why there is none."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            pickle.dump(("call", task), self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
            status, value = pickle.load(self.proc.stdout)
        except Exception as e:  # the worker died
            return RuntimeError(f"{type(e).__name__}: {e}")
        return value if status == "ok" else RuntimeError(value)

    def warm(self, prepare: Callable[[], Any]) -> bool:
        """Have the worker run ``prepare`` (build the scenario's runtime) before its first job; whether it
        succeeded."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            pickle.dump(("warm", prepare), self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
            return pickle.load(self.proc.stdout) is True
        except Exception:
            return False

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class _Here:
    """This process as one of the pool's workers: its share of a round runs here while the worker processes
    run theirs (this process would otherwise sit waiting for them), and it needs no start-up."""

    def call(self, task: Callable[[], Any]) -> Any:
        try:
            return task()
        except Exception as e:
            return e


class ClientPool:
    """``workers`` parallel players of nodes: this process and ``workers - 1`` worker processes, fresh
    interpreters (``python -m simulator.flower.pool_worker``), so no thread state of this process is inherited
    and no user script is re-imported.

    ``auto``: start only once a round's train messages have taken longer than ``start_after`` seconds in this
    process and the rounds left would take longer than ``worth`` seconds at that pace (the runner builds this
    process's client runtime before round 1, so round 1 measures training, not data loading). A worker costs
    several seconds to start (interpreter, torch, the plug-ins, the scenario's data: ``prepare``), so the
    workers start in the background and rounds keep running in this process until every worker is ready; no
    round waits for them."""

    def __init__(
        self,
        workers: int,
        *,
        auto: bool,
        rounds: int = 1_000_000,
        start_after: float = 2.0,
        worth: float = 15.0,
        prepare: Callable[[], Any] | None = None,
    ) -> None:
        self.workers, self.auto, self.start_after = workers, auto, start_after
        self.rounds, self.worth, self.prepare = rounds, worth, prepare
        self._procs: list[_Worker] = []
        self.wanted = not auto and workers > 1
        self._seen = 0
        self._warming: list[threading.Thread] = []
        self._warm_failed = False

    @property
    def active(self) -> bool:
        """Whether the next round's nodes go to the workers (auto: once all of them are ready)."""
        if not (self.wanted and self.workers > 1):
            return False
        if not self.auto:
            return True
        if not self._warming or any(t.is_alive() for t in self._warming):
            return False
        if self._warm_failed:  # a worker could not get ready: stay in this process
            self.wanted = False
            self.close()
            return False
        return True

    def _start_in_background(self) -> None:
        self._procs = [_Worker() for _ in range(self.workers - 1)]
        prepare = self.prepare

        def warm(w: _Worker) -> None:
            if prepare is not None and not w.warm(prepare):
                self._warm_failed = True

        self._warming = [threading.Thread(target=warm, args=(w,), daemon=True) for w in self._procs]
        for t in self._warming:
            t.start()

    def _consider(self, seconds: float, rounds_left: int) -> None:
        if self.auto and self.workers > 1 and seconds > self.start_after and not self.wanted:
            self.wanted = seconds * rounds_left > self.worth
            if self.wanted:
                self._start_in_background()

    def expect(self, seconds: float) -> None:
        """Before round 1: a round's client training is expected to take ``seconds`` in this process (a
        measurement, :func:`simulator.flower.warmup.round_seconds`): when that is long enough, the workers
        warm up while round 1 runs here."""
        self._consider(seconds, self.rounds)

    def observe(self, seconds: float) -> None:
        """A round's train messages took ``seconds`` in this process."""
        self._seen += 1
        self._consider(seconds, self.rounds - self._seen)

    def _parallel(self, n: int, weights: list[float], do: Callable[[_Worker | _Here, int], Any]) -> list[Any]:
        """``do(worker, i)`` for i < n, this process and the worker processes in parallel: each takes the
        next i as soon as it is free, the heaviest first (greedy list scheduling)."""
        self._procs = [w for w in self._procs if w.proc.poll() is None]
        while len(self._procs) < self.workers - 1:
            self._procs.append(_Worker())
        queue = iter(sorted(range(n), key=lambda i: (-weights[i], i)))
        lock = threading.Lock()
        results: list[Any] = [None] * n

        def work(w: _Worker | _Here) -> None:
            while True:
                with lock:
                    i = next(queue, None)
                if i is None:
                    return
                results[i] = do(w, i)

        players: list[_Worker | _Here] = [*self._procs, _Here()]
        threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in players]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def map(self, tasks: list[Callable[[], Any]], weights: list[float]) -> list[Any]:
        """Each picklable task run by a worker, the heaviest first: its result, or the exception that says
        why there is none (the task raised, the worker died)."""
        return self._parallel(len(tasks), weights, lambda w, i: w.call(tasks[i]))

    def close(self) -> None:
        for t in self._warming:
            if t is not threading.current_thread():
                t.join(timeout=60)
        self._warming = []
        for w in self._procs:
            w.close()
        self._procs = []


class InlineGrid(Grid):
    """A Grid whose nodes are ClientApp calls (in-process, or in a :class:`ClientPool`) with one persistent
    Context per node."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        *,
        first_node_id: int = 1001,
        pool: ClientPool | None = None,
        train_many: TrainMany | None = None,
        train_split: TrainSplit | None = None,
    ) -> None:
        self.client_app = client_app
        self.pool = pool
        self.train_many = train_many
        self.train_split = train_split
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
        msgs = list(messages)
        for msg in msgs:
            if msg.metadata.dst_node_id not in self.contexts:
                raise ValueError(f"no node {msg.metadata.dst_node_id}")
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        pool = self.pool
        t0 = time.perf_counter()
        all_train = all(m.metadata.message_type == MessageType.TRAIN for m in msgs)
        pooled = pool is not None and pool.active
        clients = sum(_clients_in(m) for m in msgs)
        ran_in_pool = False
        if pooled and self.train_split is not None and all_train and clients > 1:
            assert pool is not None
            self._many(msgs, lambda calls: self.train_split(calls, pool.workers, pool.map))  # type: ignore[misc]
            ran_in_pool = True
        elif self.train_many is not None and len(msgs) > 1 and all_train:
            self._many(msgs, self.train_many)
        else:
            for msg in msgs:
                reply = _call(self.client_app, msg, self.contexts[msg.metadata.dst_node_id])
                self._replies[msg.metadata.message_id] = reply
        trained = any(m.metadata.message_type == MessageType.TRAIN for m in msgs)
        if not ran_in_pool and pool is not None and trained:
            pool.observe(time.perf_counter() - t0)
        return [m.metadata.message_id for m in msgs]

    def _many(self, msgs: list[Message], train: TrainMany) -> None:
        """Several nodes' train messages answered by one call (their Contexts updated in place)."""
        calls = [(m, self.contexts[m.metadata.dst_node_id]) for m in msgs]
        try:
            many = train(calls)
        except Exception as e:  # a failure of the batch is every node's failure
            many = [Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=m) for m in msgs]
        for msg, reply in zip(msgs, many):
            self._replies[msg.metadata.message_id] = reply

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in list(message_ids) if m in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))


def run_inline(
    server_app: ServerApp,
    client_app: ClientApp,
    num_nodes: int,
    *,
    workers: int = 1,
    auto: bool = True,
    rounds: int = 1_000_000,
    train_many: TrainMany | None = None,
    train_split: TrainSplit | None = None,
    prepare: Callable[[], Any] | None = None,
    expected_round_seconds: float | None = None,
) -> None:
    """Run ``server_app`` against ``num_nodes`` nodes played by ``client_app`` in this process, or, with
    ``train_split``, by up to ``workers`` players (this process and worker processes; ``auto``: only once the
    client work of the ``rounds`` left pays for them). ``train_many``: how this process answers several nodes'
    train messages of a round in one call (one reply per message, each the reply its node alone would give;
    the privsim ClientApp trains all their clients as one cohort); without it, one ClientApp call per node.
    ``train_split``: how the workers answer a round's train messages (``train_split(calls, workers, map)``
    spreads the round's clients over the workers with ``map``, balanced by their work, whichever node plays
    them); without it, no worker process is started. ``prepare``: what a worker process runs
    before its first node (picklable; builds the runtime). ``expected_round_seconds``: a measured estimate of
    a round's client work in this process, so that the workers can warm up during round 1
    (:meth:`ClientPool.expect`)."""
    if flwr.__version__ != FLWR_VERSION:  # pragma: no cover - guarded by tests/test_inline_engine.py
        raise RuntimeError(f"the inline engine was written for flwr {FLWR_VERSION}, found {flwr.__version__}")
    _set_task_identity()
    pool = (
        ClientPool(workers, auto=auto, rounds=rounds, prepare=prepare)
        if train_split is not None and workers > 1
        else None
    )
    if pool is not None and expected_round_seconds is not None:
        pool.expect(expected_round_seconds)
    grid = InlineGrid(client_app, num_nodes, pool=pool, train_many=train_many, train_split=train_split)
    ctx = Context(run_id=_RUN_ID, node_id=_SERVER_NODE_ID, node_config={}, state=RecordDict(), run_config={})
    try:
        server_app(grid, ctx)
    finally:
        if pool is not None:
            pool.close()
