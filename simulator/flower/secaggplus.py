"""Flower's real SecAgg+ protocol, run end to end in-process: one round over the inline engine's Grid.

:mod:`simulator.secagg` reproduces SecAgg+'s *numerics* without cryptography; this module runs the protocol
itself (flwr 1.41.0): ``n`` legacy ``NumPyClient`` ClientApps wrapped in ``secaggplus_mod`` (key agreement,
Shamir shares, pairwise and private masks), and on the server ``DefaultWorkflow(fit_workflow=
SecAggPlusWorkflow(...))`` driving a legacy ``Strategy`` whose ``aggregate_fit`` captures what the server
receives: the unmasked, dequantised weighted mean. Use it to check the simulation against the protocol, to
exercise dropouts and the reconstruction threshold, and to measure the protocol's cost.

How the legacy path runs over the Message-API Grid: ``SecAggPlusWorkflow`` needs a ``LegacyContext`` (a
Context carrying a legacy ``Strategy``, a ``ClientManager``, a ``ServerConfig`` and a ``History``), so the
ServerApp's ``main`` wraps its Context in one and calls ``DefaultWorkflow`` (one round, evaluation off).
``DefaultWorkflow`` fills the ClientManager with ``GridClientProxy`` objects from ``grid.get_node_ids()``
(which needs ``grid.run``: the grid here sets an empty ``Run``); the workflow then talks to the nodes through
``grid.send_and_receive`` only. The Grid is the inline engine's :class:`~simulator.flower.inline.InlineGrid`,
with three changes: every message goes through Flower's protobuf serialisation both ways (the setup stage
sends one shared RecordDict to every node and ``secaggplus_mod`` mutates it: delivered by reference, the
second node fails), messages are delivered in node-id order (so the stochastic-rounding draws from NumPy's
global RNG come in row order, reproducible from ``seed``), and it has a run.

Dropouts: a client in ``drop_after_share_keys`` answers the setup and share-keys stages, then its ClientApp
raises on every later message (an outer mod, before ``secaggplus_mod``); the inline Grid turns that into an
error reply, which the workflow counts as a failure and drops the node from the active set, exactly as for a
node the SuperLink reports unavailable. Its pairwise masks, already added by the other clients, are removed
by the server from the Shamir shares of its first secret key. With fewer active neighbours than
``reconstruction_threshold`` the workflow logs "Insufficient available nodes" and halts without calling
``aggregate_fit``; :func:`run_secaggplus` raises :class:`SecAggPlusAborted` then.

Side effects, all undone on return: the process's Flower task identity (which stamps outgoing messages), and
the global ``numpy.random`` and ``random`` states (seeded from ``seed``; Flower's quantisation draws from
``np.random.rand``, its neighbour graph from ``random.shuffle``). Key pairs and mask seeds come from
``os.urandom``: they differ between runs but cancel exactly, so the aggregate depends on ``seed`` only.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import flwr
import numpy as np
import torch
from flwr.app import Context, Message, RecordDict
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server import ClientManager, LegacyContext, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid, ServerApp
from torch import Tensor

from simulator.context import RoundContext, private_generator
from simulator.flower.inline import FLWR_VERSION, InlineGrid
from simulator.round.secure_sum import SecureSumAborted, secagg_params
from simulator.scenario.secure_aggregation import SecureAggregationConfig
from simulator.secagg.encoding import SecAggParams, precision_problems

__all__ = ["FlowerSecAggPlus", "SecAggPlusAborted", "SecAggProtocolResult", "run_secaggplus"]

STAGES: tuple[str, ...] = (
    Stage.SETUP,
    Stage.SHARE_KEYS,
    Stage.COLLECT_MASKED_VECTORS,
    Stage.UNMASK,
)
_DROPPED_STAGES = frozenset({Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK})
_FIRST_NODE_ID = 1001  # InlineGrid's default: node id = _FIRST_NODE_ID + row
_SERVER_NODE_ID = 1  # flwr.common.constant.SUPERLINK_NODE_ID


class SecAggPlusAborted(RuntimeError):
    """Flower's workflow halted before unmasking: too few clients (or shares) left for the threshold."""


@dataclass(frozen=True)
class SecAggProtocolResult:
    """One round of Flower's SecAgg+ protocol, as the server's strategy saw it.

    ``aggregate``: float64 (d,), the vector the workflow wrote into every surviving client's ``FitRes`` (the
    quantised-weight mean ``Σ w_i Δ_i / Σ w_i`` plus quantisation error; see :mod:`simulator.secagg`).
    ``survivors``: rows of ``updates`` whose masked vectors are in the sum (the ``aggregate_fit`` results);
    ``dropped``: the others. ``num_examples``: the survivors' counts, which travel in the clear on Flower's
    legacy path. ``num_failures``: the failures handed to ``aggregate_fit`` (Flower 1.41 appends a client
    that fails the collect-masked-vectors stage twice, so one dropout shows as 2). ``stage_seconds``: wall
    time of each workflow stage, server work included; ``client_seconds``: time spent inside the ClientApps
    per stage; ``total_seconds``: the whole ServerApp run.
    """

    aggregate: Tensor
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    num_examples: tuple[int, ...]
    num_failures: int
    stage_seconds: dict[str, float]
    client_seconds: dict[str, float]
    total_seconds: float


# ---------------------------------------------------------------------------------------------------------
# Client side: a legacy NumPyClient that hands back a fixed update, under secaggplus_mod
# ---------------------------------------------------------------------------------------------------------


class _FixedUpdateClient(NumPyClient):
    """Returns its given update as its "trained parameters", with its example count."""

    def __init__(self, update: np.ndarray, num_examples: int) -> None:
        self.update = update
        self.num_examples = num_examples

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return [self.update]

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        return [self.update], self.num_examples, {}


def _stage_of(msg: Message) -> str | None:
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return None
    stage = msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE)
    return stage if isinstance(stage, str) else None


def _client_app(
    arrays: list[np.ndarray], counts: list[int], dropped: frozenset[int]
) -> tuple[ClientApp, dict[str, float]]:
    client_seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    def client_fn(context: Context) -> Client:
        pid = int(context.node_config["partition-id"])
        return _FixedUpdateClient(arrays[pid], counts[pid]).to_client()

    def timing_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        stage = _stage_of(msg)  # read before secaggplus_mod pops it from the message
        t0 = time.perf_counter()
        try:
            return call_next(msg, ctxt)
        finally:
            if stage in client_seconds:
                client_seconds[stage] += time.perf_counter() - t0

    def dropout_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        pid = int(ctxt.node_config["partition-id"])
        stage = _stage_of(msg)
        if pid in dropped and stage in _DROPPED_STAGES:
            raise ConnectionError(f"client {pid} dropped out after the share-keys stage (stage {stage})")
        return call_next(msg, ctxt)

    app = ClientApp(client_fn=client_fn, mods=[timing_mod, dropout_mod, secaggplus_mod])
    return app, client_seconds


# ---------------------------------------------------------------------------------------------------------
# Server side: a capturing legacy Strategy, a timed workflow, and the Grid
# ---------------------------------------------------------------------------------------------------------


class _CaptureStrategy(Strategy):
    """Samples every node; ``aggregate_fit`` keeps the unmasked aggregate and who is in it."""

    def __init__(self) -> None:
        self.aggregate: np.ndarray | None = None
        self.node_ids: list[int] = []
        self.num_examples: list[int] = []
        self.num_failures = 0

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return Parameters(tensors=[], tensor_type="numpy.ndarray")  # no request for initial parameters

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        proxies = sorted(client_manager.all().values(), key=lambda p: int(p.cid))
        return [(p, FitIns(parameters, {})) for p in proxies]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.num_failures = len(failures)
        if not results:
            return None, {}
        vectors = [parameters_to_ndarrays(res.parameters) for _, res in results]
        first = vectors[0]
        # the workflow writes the same unmasked aggregate into every FitRes: take it as is (a FedAvg over
        # identical vectors would only add float64 rounding)
        if any(
            len(v) != len(first) or any(not np.array_equal(a, b) for a, b in zip(v, first)) for v in vectors
        ):
            raise RuntimeError("SecAgg+ results carry different parameters; expected one shared aggregate")
        self.aggregate = np.asarray(first[0], dtype=np.float64)
        self.node_ids = [int(proxy.cid) for proxy, _ in results]
        self.num_examples = [int(res.num_examples) for _, res in results]
        return results[0][1].parameters, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


@dataclass
class _StageLog:
    seconds: dict[str, float] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)
    halted_at: str | None = None


class _TimedSecAggPlusWorkflow(SecAggPlusWorkflow):
    """Flower's workflow, unchanged, with each stage timed and the stage that halted recorded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stage_log = _StageLog()

    def _timed(self, stage: str, ok: bool, t0: float, state: WorkflowState) -> bool:
        self.stage_log.seconds[stage] = time.perf_counter() - t0
        self.stage_log.active[stage] = len(state.active_node_ids)
        if not ok and self.stage_log.halted_at is None:
            self.stage_log.halted_at = stage
        return ok

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        t0 = time.perf_counter()
        return self._timed(Stage.SETUP, super().setup_stage(grid, context, state), t0, state)

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        t0 = time.perf_counter()
        return self._timed(Stage.SHARE_KEYS, super().share_keys_stage(grid, context, state), t0, state)

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        t0 = time.perf_counter()
        ok = super().collect_masked_vectors_stage(grid, context, state)
        return self._timed(Stage.COLLECT_MASKED_VECTORS, ok, t0, state)

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        t0 = time.perf_counter()
        return self._timed(Stage.UNMASK, super().unmask_stage(grid, context, state), t0, state)


class _OrderedInlineGrid(InlineGrid):
    """The inline Grid, over the wire and in node order, with a run (the ClientManager reads ``grid.run``)."""

    def __init__(self, client_app: ClientApp, num_nodes: int) -> None:
        super().__init__(client_app, num_nodes, first_node_id=_FIRST_NODE_ID)
        from flwr.supercore.run import Run  # deferred: a Flower internal, only needed here

        self.inline_run_id = next(iter(self.contexts.values())).run_id
        self.set_run(Run.create_empty(self.inline_run_id))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        # Over the wire: each node gets its own copy. Without it, secaggplus_mod popping the stage from the
        # setup stage's content (one RecordDict shared by every message) breaks the next node's message.
        # Node order: the workflow builds each stage's messages from a set; sorted, the clients' draws from
        # NumPy's global RNG come in row order.
        return super().push_messages(
            sorted(map(_over_the_wire, messages), key=lambda m: m.metadata.dst_node_id)
        )

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [_over_the_wire(m) for m in super().pull_messages(message_ids)]


def _over_the_wire(msg: Message) -> Message:
    """A copy of ``msg`` as the receiving process would see it: serialised and deserialised (protobuf)."""
    from flwr.common.serde import message_from_proto, message_to_proto  # deferred: Flower's wire format

    return message_from_proto(message_to_proto(msg))


def _no_evaluate(grid: Grid, context: Context) -> None:
    """Evaluation off: the round is one fit."""


@contextmanager
def _task_identity(run_id: int) -> Iterator[None]:
    """Stamp server messages as Flower's SuperLink would, and put back whatever identity the process had."""
    from flwr.supercore.task_identity import TaskIdentity  # deferred: a Flower internal

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, _SERVER_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@contextmanager
def _seeded_global_rngs(seed: int) -> Iterator[None]:
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


# ---------------------------------------------------------------------------------------------------------
# One round
# ---------------------------------------------------------------------------------------------------------


def _as_arrays(updates: Tensor) -> list[np.ndarray]:
    if updates.ndim != 2:
        raise ValueError(f"updates must be (n, d), got shape {tuple(updates.shape)}")
    if not updates.is_floating_point():
        raise TypeError(f"updates must be floating point, got {updates.dtype}")
    dtype = torch.float64 if updates.dtype == torch.float64 else torch.float32  # what Flower would receive
    arr = updates.detach().to(device="cpu", dtype=dtype).numpy()
    if not np.isfinite(arr).all():
        raise ValueError("updates have non-finite values; SecAgg+ cannot encode NaN or inf")
    return [np.ascontiguousarray(row) for row in arr]


def run_secaggplus(
    updates: Tensor,
    num_examples: Sequence[int],
    *,
    params: SecAggParams,
    num_shares: int,
    reconstruction_threshold: int,
    drop_after_share_keys: Sequence[int] = (),
    timeout: float | None = None,
    seed: int = 0,
) -> SecAggProtocolResult:
    """Run one round of Flower's SecAgg+ protocol over ``updates`` (n, d), one in-process client per row.

    Client ``i`` uploads row ``i`` as its parameters with ``num_examples[i]``; the rows in
    ``drop_after_share_keys`` stop answering after the share-keys stage. ``num_shares`` and
    ``reconstruction_threshold`` go to ``SecAggPlusWorkflow`` as given (ints: Flower wants
    ``2 < num_shares`` and ``reconstruction_threshold < num_shares``); ``params`` gives its quantisation
    settings. ``timeout`` is passed to the workflow; the in-process Grid answers synchronously, so it never
    waits. Raises :class:`SecAggPlusAborted` when the workflow halts without an aggregate (too few survivors
    for the threshold).
    """
    if flwr.__version__ != FLWR_VERSION:  # pragma: no cover - guarded by tests/test_inline_engine.py
        raise RuntimeError(f"written against flwr {FLWR_VERSION}, found {flwr.__version__}")
    arrays = _as_arrays(updates)
    n = len(arrays)
    counts = [int(k) for k in num_examples]
    if len(counts) != n:
        raise ValueError(f"{n} updates but {len(counts)} example counts")
    if n < 2:
        raise ValueError(f"SecAgg+ needs at least 2 clients, got {n}")
    if any(k < 0 for k in counts):
        raise ValueError(f"num_examples must be >= 0, got {counts}")
    dropped = frozenset(int(i) for i in drop_after_share_keys)
    if len(dropped) != len(drop_after_share_keys) or not dropped <= set(range(n)):
        raise ValueError(
            f"drop_after_share_keys must be distinct rows in [0, {n}), got {drop_after_share_keys}"
        )

    client_app, client_seconds = _client_app(arrays, counts, dropped)
    strategy = _CaptureStrategy()
    workflow = _TimedSecAggPlusWorkflow(
        num_shares,
        reconstruction_threshold,
        max_weight=params.max_weight,
        clipping_range=params.clipping_range,
        quantization_range=params.quantization_range,
        modulus_range=params.modulus,
        timeout=timeout,
    )
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        legacy = LegacyContext(context, config=ServerConfig(num_rounds=1), strategy=strategy)
        DefaultWorkflow(fit_workflow=workflow, evaluate_workflow=_no_evaluate)(grid, legacy)

    grid = _OrderedInlineGrid(client_app, n)
    server_ctx = Context(
        run_id=grid.inline_run_id, node_id=_SERVER_NODE_ID, node_config={}, state=RecordDict(), run_config={}
    )
    t0 = time.perf_counter()
    with _task_identity(grid.inline_run_id), _seeded_global_rngs(seed):
        server_app(grid, server_ctx)
    total = time.perf_counter() - t0

    if strategy.aggregate is None:
        log = workflow.stage_log
        raise SecAggPlusAborted(
            f"Flower's SecAgg+ workflow halted at stage {log.halted_at!r} without an aggregate: active "
            f"clients per stage {log.active}, reconstruction_threshold {reconstruction_threshold}, "
            f"num_shares {num_shares}, {len(dropped)} of {n} clients dropped after share keys"
        )
    rows = sorted(nid - _FIRST_NODE_ID for nid in strategy.node_ids)
    by_row = dict(zip((nid - _FIRST_NODE_ID for nid in strategy.node_ids), strategy.num_examples))
    return SecAggProtocolResult(
        aggregate=torch.from_numpy(cast(np.ndarray, strategy.aggregate)),
        survivors=tuple(rows),
        dropped=tuple(sorted(set(range(n)) - set(rows))),
        num_examples=tuple(by_row[r] for r in rows),
        num_failures=strategy.num_failures,
        stage_seconds=dict(workflow.stage_log.seconds),
        client_seconds=dict(client_seconds),
        total_seconds=total,
    )


# ---------------------------------------------------------------------------------------------------------
# [secure_aggregation] mode = "secaggplus": the server step's secure sum, by Flower's own protocol
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FlowerSecAggPlus:
    """The server step's secure sum (:class:`simulator.round.secure_sum.SecureSum`) computed by running
    Flower's SecAgg+ protocol (``SecAggPlusWorkflow`` + ``secaggplus_mod``) over the round's updates, one
    protocol client per cohort client. Each client drops after sharing its keys with probability
    ``drop_after_share_keys`` (seeded from ``key``); the protocol recovers the survivors' sum, and only the
    survivors count as aggregated. ``last`` keeps the last protocol run (timings, survivors)."""

    cfg: SecureAggregationConfig
    key: int | None
    last: SecAggProtocolResult | None = None

    def check(self, counts: Sequence[int]) -> list[str]:
        if self.cfg.max_weight is None:
            return []
        return precision_problems(list(counts), secagg_params(self.cfg, counts))

    def __call__(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> tuple[Tensor, tuple[int, ...]]:
        counts = [max(1, round(float(w))) for w in weights]
        g = private_generator(self.key, ctx.server_round, "secaggplus")
        p = self.cfg.drop_after_share_keys
        drop = [i for i, u in enumerate(torch.rand(len(counts), generator=g).tolist()) if u < p] if p else []
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        try:
            res = run_secaggplus(
                updates.detach().cpu(),
                counts,
                params=secagg_params(self.cfg, counts),
                num_shares=self.cfg.num_shares,
                reconstruction_threshold=self.cfg.reconstruction_threshold,
                drop_after_share_keys=drop,
                seed=seed,
            )
        except SecAggPlusAborted as e:
            raise SecureSumAborted(str(e)) from e
        self.last = res
        kept = tuple(ctx.client_ids[i] for i in res.survivors)
        return res.aggregate.to(device=updates.device, dtype=updates.dtype), kept
