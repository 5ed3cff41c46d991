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
from simulator.flower.runtime import runtime_for
from simulator.round import ClientPlugins, ModelRefused, client_step

if TYPE_CHECKING:
    from flwr.app import MetricRecordValues

__all__ = ["STATE_KEY", "ModelRefused", "client_train", "make_client_app"]

STATE_KEY = "privsim-state"


def _load_state(context: Context) -> dict[str, np.ndarray]:
    rec = context.state.get(STATE_KEY)
    assert rec is None or isinstance(rec, ArrayRecord)  # _save_state stores an ArrayRecord
    return {k: v.numpy() for k, v in rec.items()} if rec is not None else {}


def _save_state(context: Context, state: dict[str, np.ndarray]) -> None:
    if state:
        context.state[STATE_KEY] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


def client_train(scenario_json: str, msg: Message, context: Context) -> Message:
    """The Flower adapter around :func:`simulator.round.client_step`: message in, steps 1-6, message out."""
    rt = runtime_for(scenario_json)
    s = rt.scenario
    torch.set_num_threads(s.simulation.torch_threads)
    pid = int(context.node_config["partition-id"])
    config: dict[str, Any] = dict(msg.content["config"])
    rnd = int(config["server-round"])
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)  # the strategy sends the global model as an ArrayRecord
    global_sd = arrays.to_torch_state_dict()
    model = rt.model
    model.load_state_dict(global_sd)
    x, y = rt.data.client(pid)
    if rt.record_canaries is not None:  # [audit] level = "record": this client's inserted canary examples
        cx, cy = rt.record_canaries.for_client(pid)
        x, y = torch.cat([x, cx.to(x.dtype)]), torch.cat([y, cy.to(y.dtype)])
    acting = pid in rt.schedule.acting(rnd)
    state = _load_state(context)
    ctx = ClientContext(
        partition_id=pid,
        server_round=rnd,
        seed=s.seed,
        num_examples=int(x.shape[0]),
        global_vector=flatten(global_sd, rt.layout).to(s.simulation.device),
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
    reply = client_step(model, x, y, ctx, plugins, config=config)
    _save_state(context, state)
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in reply.payload.items()}),
            # cast: the stub asks for an invariant dict of every metric value type; a dict of floats is one
            "metrics": MetricRecord(cast("dict[str, MetricRecordValues]", reply.metrics)),
        }
    )
    return Message(content=content, reply_to=msg)


def client_query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (node ids are random in simulation)."""
    info = ConfigRecord({"partition-id": int(context.node_config["partition-id"])})
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
