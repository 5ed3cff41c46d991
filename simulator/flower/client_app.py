"""The privsim ClientApp (Flower Message API): a thin adapter around the round core's client step (1-6).

Importing this module does no work; :func:`make_client_app` builds the app around the scenario
JSON, and the runtime (data, model, plug-ins) is built lazily once per process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from simulator.context import ClientContext
from simulator.flat import Layout, flatten
from simulator.flower.nodes import node_partitions
from simulator.flower.runtime import runtime_for
from simulator.round import ClientPlugins, ClientReply, ModelRefused
from simulator.round.cohort import ClientJob, cohort_step

if TYPE_CHECKING:
    from flwr.app import MetricRecordValues

__all__ = [
    "STATE_KEY",
    "ClientSpec",
    "ModelRefused",
    "balance",
    "client_train",
    "client_train_nodes",
    "client_train_split",
    "make_client_app",
    "my_partitions",
    "pack_reply",
    "train_clients",
]

STATE_KEY = "privsim-state"


def _state_key(pid: int) -> str:
    return f"{STATE_KEY}/{pid}"


def _load_state(context: Context, pid: int) -> dict[str, np.ndarray]:
    rec = context.state.get(_state_key(pid))
    assert rec is None or isinstance(rec, ArrayRecord)  # _save_state stores an ArrayRecord
    return {k: v.numpy() for k, v in rec.items()} if rec is not None else {}


def _save_state(context: Context, pid: int, state: dict[str, np.ndarray]) -> None:
    if state:
        context.state[_state_key(pid)] = ArrayRecord(
            {k: Array(np.ascontiguousarray(v)) for k, v in state.items()}
        )


def my_partitions(num_clients: int, context: Context) -> range:
    """The partitions this node plays (:func:`simulator.flower.nodes.node_partitions`)."""
    nc = context.node_config
    return node_partitions(num_clients, int(nc["num-partitions"]), int(nc["partition-id"]))


def client_train(scenario_json: str, msg: Message, context: Context) -> Message:
    """The Flower adapter around the round core's client step: message in, steps 1-6 for each partition the
    message names (``config["partitions"]``, all played by this node; trained together by
    :func:`simulator.round.cohort.cohort_step`), one message out."""
    return client_train_nodes(scenario_json, [(msg, context)])[0]


def _flat(arrays: ArrayRecord, layout: Layout, device: torch.device) -> torch.Tensor:
    return flatten(arrays.to_torch_state_dict(), layout).to(device)


@dataclass
class ClientSpec:
    """One client a train message asks for: its partition, the message's config and the state its node keeps
    for it (picklable: a worker process can train it)."""

    pid: int
    config: dict[str, Any]
    state: dict[str, np.ndarray]


@dataclass
class _Plan:
    rnd: int
    arrays: ArrayRecord  # the round's global model, as every message carries it
    asked: list[list[int]]  # per message, the partitions it names, in order
    clients: list[ClientSpec]  # every message's clients, in message order


def _plan(scenario_json: str, calls: Sequence[tuple[Message, Context]]) -> _Plan:
    """Check that the messages are this round's, share one global model and name partitions their nodes play;
    load each client's state from its node's Context."""
    rt = runtime_for(scenario_json)
    s = rt.scenario
    rnd0: int | None = None  # the round and global model every message must share
    arrays0: ArrayRecord | None = None
    flat0: torch.Tensor | None = None  # decoded only when a message carries a record of its own
    asked_all: list[list[int]] = []
    clients: list[ClientSpec] = []
    for msg, context in calls:
        config: dict[str, Any] = dict(msg.content["config"])
        asked = [int(p) for p in cast("list[int]", config.pop("partitions", []))]
        mine = my_partitions(s.data.num_clients, context)
        foreign = [p for p in asked if p not in mine]
        if foreign:
            raise ValueError(f"this node plays partitions {mine.start}-{mine.stop - 1}, not {foreign}")
        rnd = int(config["server-round"])
        arrays = msg.content["arrays"]
        assert isinstance(arrays, ArrayRecord)  # the strategy sends the global model as an ArrayRecord
        if arrays0 is None:
            rnd0, arrays0 = rnd, arrays
        elif rnd != rnd0:
            raise ValueError("the messages of one call must carry the same round and global model")
        elif arrays is not arrays0:  # in-process the round's messages share one record: nothing to compare
            if flat0 is None:
                flat0 = _flat(arrays0, rt.layout, torch.device("cpu"))
            if not torch.equal(_flat(arrays, rt.layout, torch.device("cpu")), flat0):
                raise ValueError("the messages of one call must carry the same round and global model")
        asked_all.append(asked)
        clients.extend(ClientSpec(pid, config, _load_state(context, pid)) for pid in asked)
    assert rnd0 is not None and arrays0 is not None
    return _Plan(rnd0, arrays0, asked_all, clients)


def train_clients(
    scenario_json: str, rnd: int, arrays: ArrayRecord, clients: Sequence[ClientSpec]
) -> tuple[list[ClientReply | BaseException], list[dict[str, np.ndarray]]]:
    """Steps 1-6 for ``clients`` of round ``rnd`` from the global model ``arrays``, as one
    :func:`simulator.round.cohort.cohort_step` (one vectorised computation where it pays): each client's
    reply or failure, and its state after the round. Runs in this process or in a worker process; a
    client's result depends on the scenario, the round, the model and its own state only."""
    rt = runtime_for(scenario_json)
    s = rt.scenario
    torch.set_num_threads(s.simulation.torch_threads)
    model = rt.model
    global_sd = arrays.to_torch_state_dict()
    model.load_state_dict(global_sd)
    global_vector = flatten(global_sd, rt.layout).to(s.simulation.device)
    acting_now = rt.schedule.acting(rnd)
    jobs: list[ClientJob] = []
    for c in clients:
        pid = c.pid
        x, y = rt.data.client(pid)
        if rt.record_canaries is not None:  # [audit] level = "record": this client's canary examples
            cx, cy = rt.record_canaries.for_client(pid)
            x, y = torch.cat([x, cx.to(x.dtype)]), torch.cat([y, cy.to(y.dtype)])
        acting = pid in acting_now
        ctx = ClientContext(
            partition_id=pid,
            server_round=rnd,
            seed=s.seed,
            num_examples=int(x.shape[0]),
            global_vector=global_vector,
            layout=rt.layout,
            train=rt.train,
            num_clients=s.data.num_clients,
            expected_clients_per_round=rt.sampler.expected_size,
            malicious=acting,
            colluders=rt.schedule.colluders(pid, rnd),
            state=c.state,
            noise_key=rt.noise_key(pid),
        )
        plugins = ClientPlugins(
            privacy=rt.privacy,
            defenses=tuple(rt.client_defenses),
            compressor=rt.compressor,
            attack=rt.attack if acting else None,
        )
        jobs.append(ClientJob(x, y, ctx, plugins, c.config))
    results = cohort_step(
        model,
        jobs,
        vectorise=s.simulation.vectorise,
        kernels=s.simulation.vectorise_kernels,
        report=rt.cohort_report,
    )
    return results, [c.state for c in clients]


def _answer(
    calls: Sequence[tuple[Message, Context]],
    plan: _Plan,
    results: Sequence[ClientReply | BaseException],
    states: Sequence[dict[str, np.ndarray]],
) -> list[Message]:
    """Each node's reply from its clients' results; client state is kept only once every reply is built."""
    replies, k = [], 0
    for (msg, _), asked in zip(calls, plan.asked):
        replies.append(Message(content=pack_reply(asked, results[k : k + len(asked)]), reply_to=msg))
        k += len(asked)
    k = 0
    for (_, context), asked in zip(calls, plan.asked):
        for pid, state in zip(asked, states[k : k + len(asked)]):
            _save_state(context, pid, state)
        k += len(asked)
    return replies


def client_train_nodes(scenario_json: str, calls: Sequence[tuple[Message, Context]]) -> list[Message]:
    """:func:`client_train` for several nodes' train messages of one round at once (the inline engine's
    in-process path): every client of every message goes into one :func:`cohort_step`, so one vectorised
    computation trains them all; each node gets its own reply, with exactly the content it would get alone."""
    plan = _plan(scenario_json, calls)
    results, states = train_clients(scenario_json, plan.rnd, plan.arrays, plan.clients)
    return _answer(calls, plan, results, states)


def balance(weights: Sequence[float], parts: int) -> list[list[int]]:
    """Indices of ``weights`` split into at most ``parts`` non-empty groups of near-equal total weight
    (longest processing time first: heaviest item to the lightest group; ties to the lower group and the
    lower index, so the split is deterministic); each group's indices in increasing order.

    >>> balance([5, 1, 4, 2, 3], 2)
    [[0, 1, 3], [2, 4]]
    >>> balance([1.0], 3)
    [[0]]
    """
    loads = [0.0] * max(1, min(parts, len(weights)))
    groups: list[list[int]] = [[] for _ in loads]
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        g = min(range(len(loads)), key=lambda g: (loads[g], g))
        groups[g].append(i)
        loads[g] += float(weights[i])
    return [sorted(g) for g in groups if g]


RunTasks = Callable[[list[Callable[[], Any]], list[float]], list[Any]]


def client_train_split(
    scenario_json: str, calls: Sequence[tuple[Message, Context]], parts: int, run_tasks: RunTasks
) -> list[Message]:
    """:func:`client_train_nodes` with the round's clients spread over ``parts`` processes by ``run_tasks``
    (the inline engine's worker pool: ``run_tasks(tasks, weights)`` runs each picklable task in a worker and
    returns its result, or the exception that stopped it). The round's clients, whichever node plays them,
    are split into groups of near-equal training work (examples × local epochs is the same recipe for
    every client, so examples), not by node: with nodes holding fixed groups of partitions, a round's sample
    loads them unevenly and the round waits for the heaviest. Each client's state travels with it and comes
    back to its node's Context; the replies are the ones :func:`client_train_nodes` would give."""
    plan = _plan(scenario_json, calls)
    rt = runtime_for(scenario_json)
    weights = [float(len(rt.data.client_indices[c.pid])) for c in plan.clients]  # no gather of the data
    groups = balance(weights, parts)
    tasks: list[Callable[[], Any]] = [
        functools.partial(train_clients, scenario_json, plan.rnd, plan.arrays, [plan.clients[i] for i in g])
        for g in groups
    ]
    outputs = run_tasks(tasks, [sum(weights[i] for i in g) for g in groups])
    results: list[ClientReply | BaseException | None] = [None] * len(plan.clients)
    states = [c.state for c in plan.clients]
    for g, out in zip(groups, outputs):
        if isinstance(out, BaseException):  # the worker failed: its clients fail this round, state unchanged
            for i in g:
                results[i] = RuntimeError(f"worker process failed: {out}")
            continue
        res, st = out
        for i, r, state in zip(g, res, st):
            results[i], states[i] = r, state
    assert all(r is not None for r in results)
    return _answer(calls, plan, cast("list[ClientReply | BaseException]", results), states)


def pack_reply(asked: Sequence[int], results: Sequence[ClientReply | BaseException]) -> RecordDict:
    """One node's reply (read by :func:`simulator.flower.replies.unpack`): a payload array that every client
    that answered sends with the same shape and dtype travels as one stacked array ``"*/<name>"`` (a row per
    answering client, in the order of ``clients["partitions"]`` less the failed ones), any other as
    ``"<partition>/<name>"``; metrics likewise as a list ``"*/<metric>"`` or ``"<partition>/<metric>"``.
    Stacking keeps the cost of a reply (Flower serialises every array) independent of how many clients a
    node plays."""
    clients: dict[str, Any] = {"partitions": list(asked)}
    ok: list[tuple[int, ClientReply]] = []
    for pid, res in zip(asked, results):
        if isinstance(res, BaseException):
            clients[f"failed-{pid}"] = f"{type(res).__name__}: {res}"
        else:
            ok.append((pid, res))
    arrays_out: dict[str, Array] = {}
    metrics_out: dict[str, Any] = {}
    names = {k for _, r in ok for k in r.payload}
    for name in sorted(names):
        got = [r.payload.get(name) for _, r in ok]
        first = got[0]
        if len(ok) > 1 and all(
            a is not None and first is not None and a.shape == first.shape and a.dtype == first.dtype
            for a in got
        ):
            arrays_out[f"*/{name}"] = Array(np.stack(cast("list[np.ndarray]", got)))
        else:
            for (pid, _), a in zip(ok, got):
                if a is not None:
                    arrays_out[f"{pid}/{name}"] = Array(np.ascontiguousarray(a))
    mnames = {k for _, r in ok for k in r.metrics}
    for name in sorted(mnames):
        vals = [r.metrics.get(name) for _, r in ok]
        kinds = {type(v) for v in vals}
        if len(ok) > 1 and kinds in ({int}, {float}):
            metrics_out[f"*/{name}"] = list(vals)
        else:
            for (pid, _), v in zip(ok, vals):
                if v is not None:
                    metrics_out[f"{pid}/{name}"] = v
    return RecordDict(
        {
            "arrays": ArrayRecord(arrays_out),
            # cast: the stub asks for an invariant dict of every metric value type
            "metrics": MetricRecord(cast("dict[str, MetricRecordValues]", metrics_out)),
            "clients": ConfigRecord(clients),
        }
    )


def client_query(msg: Message, context: Context) -> Message:
    """Tell the server which node index this node has (node ids are random in simulation); the partitions it
    plays follow from it (:mod:`simulator.flower.nodes`)."""
    info = ConfigRecord(
        {
            "partition-id": int(context.node_config["partition-id"]),
            "num-partitions": int(context.node_config["num-partitions"]),
        }
    )
    return Message(content=RecordDict({"info": info}), reply_to=msg)


def make_client_app(scenario_json: str) -> ClientApp:
    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return client_train(scenario_json, msg, context)

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        return client_query(msg, context)

    return app
