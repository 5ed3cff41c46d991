"""The privsim ClientApp (Flower Message API): steps 1-6 of a round on one client.

Importing this module does no work; :func:`make_client_app` builds the app around the scenario
JSON, and the runtime (data, model, plug-ins) is built lazily once per process.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from simulator.context import ClientContext
from simulator.flat import flatten, model_vector
from simulator.flower.runtime import runtime_for
from simulator.training import train_local

if TYPE_CHECKING:
    from flwr.app import MetricRecordValues

__all__ = ["make_client_app", "client_train", "STATE_KEY", "ModelRefused"]

STATE_KEY = "privsim-state"


def _load_state(context: Context) -> dict[str, np.ndarray]:
    rec = context.state[STATE_KEY] if STATE_KEY in context.state else None
    assert rec is None or isinstance(rec, ArrayRecord)  # _save_state stores an ArrayRecord
    return {k: v.numpy() for k, v in rec.items()} if rec is not None else {}


def _save_state(context: Context, state: dict[str, np.ndarray]) -> None:
    if state:
        context.state[STATE_KEY] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


class ModelRefused(RuntimeError):
    """A client defense refused the received model; the round records the client as failed with the reason."""


def client_train(scenario_json: str, msg: Message, context: Context) -> Message:
    rt = runtime_for(scenario_json)
    s = rt.scenario
    torch.set_num_threads(s.simulation.torch_threads)
    pid = int(context.node_config["partition-id"])
    config: dict[str, Any] = dict(msg.content["config"])
    rnd = int(config["server-round"])

    # 1. data (and the attacker's poisoned view)
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)  # the strategy sends the global model as an ArrayRecord
    global_sd = arrays.to_torch_state_dict()
    model = rt.model
    model.load_state_dict(global_sd)
    gvec = flatten(global_sd, rt.layout).to(s.simulation.device)
    x, y = rt.data.client(pid)
    if rt.record_canaries is not None:  # [audit] level = "record": this client's inserted canary examples
        cx, cy = rt.record_canaries.for_client(pid)
        x, y = torch.cat([x, cx.to(x.dtype)]), torch.cat([y, cy.to(y.dtype)])
    acting = pid in rt.schedule.acting(rnd)
    state = _load_state(context)
    ctx = ClientContext(
        partition_id=pid, server_round=rnd, seed=s.seed, num_examples=int(x.shape[0]), global_vector=gvec,
        layout=rt.layout, train=rt.train, num_clients=s.data.num_clients,
        expected_clients_per_round=rt.sampler.expected_size, malicious=acting,
        colluders=rt.schedule.colluders(pid, rnd), state=state, noise_key=rt.noise_key(pid))
    if any(d.needs_client_data for d in rt.client_defenses):  # e.g. Soteria: the received model and own data
        ctx = dataclasses.replace(ctx, received_model=copy.deepcopy(model), data=(x, y))
    for d in rt.client_defenses:  # a client defense may refuse the received model (model_inspection)
        why = d.inspect(model, ctx)
        if why:
            raise ModelRefused(f"client {pid} refused the model: {why}")
    attack = rt.attack if acting else None
    hooks = None
    if attack is not None:
        x, y = attack.poison(x, y, ctx)
        hooks = attack.hooks(ctx)

    # 2. train (DP-SGD when the privacy mechanism takes over)
    out = rt.privacy.client_train(model, x, y, ctx, config, hooks)
    if out is None:
        stats = train_local(model, x, y, rt.train, generator=ctx.generator("train"), hooks=hooks)
        metrics: dict[str, float] = {}
    else:
        stats, metrics = out

    # 3. update, 4. attack, 5. defend (privacy first, then the client defense chain, then compression)
    delta = model_vector(model, rt.layout) - gvec
    if attack is not None:
        delta = attack.transform(delta, ctx)
    delta, pm = rt.privacy.client_update(delta, ctx, config)
    metrics.update(pm)
    for d in rt.client_defenses:
        delta = d.apply(delta, ctx)
    payload = rt.compressor.encode(delta, ctx)
    _save_state(context, state)

    # 6. reply
    metrics.update({"num-examples": int(stats.num_examples), "train-loss": float(stats.loss),
                    "local-steps": int(stats.steps), "partition-id": pid})
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in payload.items()}),
        # cast: the stub asks for an invariant dict of every metric value type; a dict of floats is one
        "metrics": MetricRecord(cast("dict[str, MetricRecordValues]", metrics)),
    })
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
