"""The privsim ClientApp (Flower Message API): a thin adapter around the round core's client step (1-6).

Importing this module does no work; :func:`make_client_app` builds the app around the scenario
JSON, and the runtime (data, model, plug-ins) is built lazily once per process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from simulator.context import ClientContext
from simulator.flat import flatten
from simulator.flower.nodes import node_partitions
from simulator.flower.runtime import runtime_for
from simulator.round import ClientPlugins, ModelRefused
from simulator.round.cohort import ClientJob, cohort_step

if TYPE_CHECKING:
    from flwr.app import MetricRecordValues

__all__ = ["STATE_KEY", "ModelRefused", "client_train", "make_client_app", "my_partitions"]

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
    rt = runtime_for(scenario_json)
    s = rt.scenario
    torch.set_num_threads(s.simulation.torch_threads)
    config: dict[str, Any] = dict(msg.content["config"])
    asked = [int(p) for p in cast("list[int]", config.pop("partitions", []))]
    mine = my_partitions(s.data.num_clients, context)
    foreign = [p for p in asked if p not in mine]
    if foreign:
        raise ValueError(f"this node plays partitions {mine.start}-{mine.stop - 1}, not {foreign}")
    rnd = int(config["server-round"])
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)  # the strategy sends the global model as an ArrayRecord
    global_sd = arrays.to_torch_state_dict()
    model = rt.model
    model.load_state_dict(global_sd)
    global_vector = flatten(global_sd, rt.layout).to(s.simulation.device)
    acting_now = rt.schedule.acting(rnd)
    jobs, states = [], []
    for pid in asked:
        x, y = rt.data.client(pid)
        if rt.record_canaries is not None:  # [audit] level = "record": this client's inserted canary examples
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
    arrays_out: dict[str, Array] = {}
    metrics_out: dict[str, float] = {}
    clients: dict[str, Any] = {"partitions": asked}
    for pid, state, res in zip(asked, states, results):
        _save_state(context, pid, state)
        if isinstance(res, BaseException):
            clients[f"failed-{pid}"] = f"{type(res).__name__}: {res}"
            continue
        arrays_out.update({f"{pid}/{k}": Array(np.ascontiguousarray(v)) for k, v in res.payload.items()})
        metrics_out.update({f"{pid}/{k}": v for k, v in res.metrics.items()})
    content = RecordDict(
        {
            "arrays": ArrayRecord(arrays_out),
            # cast: the stub asks for an invariant dict of every metric value type; a dict of floats is one
            "metrics": MetricRecord(cast("dict[str, MetricRecordValues]", metrics_out)),
            "clients": ConfigRecord(clients),
        }
    )
    return Message(content=content, reply_to=msg)


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
