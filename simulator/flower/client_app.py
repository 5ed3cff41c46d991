"""The privsim ClientApp (Flower Message API): a thin adapter around the round core's client step (1-6).

Importing this module does no work; :func:`make_client_app` builds the app around the scenario
JSON, and the runtime (data, model, plug-ins) is built lazily once per process.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    "ModelRefused",
    "client_train",
    "client_train_nodes",
    "make_client_app",
    "my_partitions",
    "pack_reply",
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


def client_train_nodes(scenario_json: str, calls: Sequence[tuple[Message, Context]]) -> list[Message]:
    """:func:`client_train` for several nodes' train messages of one round at once (the inline engine's
    in-process path): every client of every message goes into one :func:`cohort_step`, so one vectorised
    computation trains them all; each node gets its own reply, with exactly the content it would get alone."""
    rt = runtime_for(scenario_json)
    s = rt.scenario
    torch.set_num_threads(s.simulation.torch_threads)
    jobs: list[ClientJob] = []
    states: list[dict[str, np.ndarray]] = []
    per_node: list[list[int]] = []
    first: tuple[int, torch.Tensor] | None = None  # the round and global model every message must share
    first_arrays: ArrayRecord | None = None
    model = rt.model
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
        if first is None:
            global_sd = arrays.to_torch_state_dict()
            model.load_state_dict(global_sd)
            first = (rnd, flatten(global_sd, rt.layout).to(s.simulation.device))
            first_arrays = arrays
        elif rnd != first[0] or (
            arrays is not first_arrays  # in-process the round's messages share one record: nothing to compare
            and not torch.equal(_flat(arrays, rt.layout, first[1].device), first[1])
        ):
            raise ValueError("the messages of one call must carry the same round and global model")
        global_vector = first[1]
        acting_now = rt.schedule.acting(rnd)
        per_node.append(asked)
        for pid in asked:
            x, y = rt.data.client(pid)
            if rt.record_canaries is not None:  # [audit] level = "record": this client's canary examples
                cx, cy = rt.record_canaries.for_client(pid)
                x, y = torch.cat([x, cx.to(x.dtype)]), torch.cat([y, cy.to(y.dtype)])
            acting = pid in acting_now
            state = _load_state(context, pid)
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
                state=state,
                noise_key=rt.noise_key(pid),
            )
            plugins = ClientPlugins(
                privacy=rt.privacy,
                defenses=tuple(rt.client_defenses),
                compressor=rt.compressor,
                attack=rt.attack if acting else None,
            )
            jobs.append(ClientJob(x, y, ctx, plugins, config))
            states.append(state)
    results = cohort_step(model, jobs, vectorise=s.simulation.vectorise, report=rt.cohort_report)
    replies, k = [], 0
    for (msg, _), asked in zip(calls, per_node):
        replies.append(Message(content=pack_reply(asked, results[k : k + len(asked)]), reply_to=msg))
        k += len(asked)
    k = 0
    for (_, context), asked in zip(calls, per_node):  # client state is kept only once every reply is built
        for pid, state in zip(asked, states[k : k + len(asked)]):
            _save_state(context, pid, state)
        k += len(asked)
    return replies


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
