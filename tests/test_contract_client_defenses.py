"""Contract of every registered client defense (and server defense), parametrised by registry name,
default params: ``apply`` keeps shape and dtype, gives a finite output on a finite input, leaves its input
alone and is deterministic for identical contexts (privacy noise comes from ``ctx.private_generator``, so
the contexts carry a fixed ``noise_key``); ``inspect`` accepts (returns None for) an honest model of the
agreed layout.

``needs_client_data`` is checked both ways: a defense that declares it gets ``received_model`` and ``data`` in
its context, as the client app gives them; one that does not declare it gets neither and must still work.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from defenses.base import CLIENT_DEFENSES, SERVER_DEFENSES, ClientDefense
from simulator.context import ClientContext, RoundContext
from simulator.flat import layout_of, model_vector
from simulator.models import build_model
from simulator.registry import import_plugins
from simulator.training import LocalTrainConfig

import_plugins()

NAMES = CLIENT_DEFENSES.names()
SERVER_NAMES = SERVER_DEFENSES.names()
NUM_CLASSES = 10
SHAPE = (1, 28, 28)
NOISE_KEY = 99


def small_model(seed: int = 0) -> nn.Module:
    return build_model(
        "cnn", {"channels": [4, 8], "hidden": 16}, input_shape=SHAPE, num_classes=NUM_CLASSES, seed=seed
    )


MODEL = small_model()
LAYOUT = layout_of(MODEL)


def make_ctx(defense: ClientDefense, model: nn.Module = MODEL) -> ClientContext:
    ctx = ClientContext(
        partition_id=2,
        server_round=3,
        seed=5,
        num_examples=8,
        global_vector=model_vector(model, LAYOUT),
        layout=LAYOUT,
        train=LocalTrainConfig(batch_size=8, lr=0.05),
        num_clients=10,
        expected_clients_per_round=5.0,
        noise_key=NOISE_KEY,
    )
    if defense.needs_client_data:
        g = torch.Generator().manual_seed(1)
        data = (torch.rand(8, *SHAPE, generator=g), torch.arange(8) % NUM_CLASSES)
        ctx = dataclasses.replace(ctx, received_model=copy.deepcopy(model), data=data)
    return ctx


def honest_delta() -> torch.Tensor:
    return torch.randn(LAYOUT.dim, generator=torch.Generator().manual_seed(0)) * 0.05


@pytest.mark.parametrize("name", NAMES)
def test_needs_client_data_is_a_bool(name: str) -> None:
    assert isinstance(CLIENT_DEFENSES.create(name, {}).needs_client_data, bool)


@pytest.mark.parametrize("name", NAMES)
def test_apply_keeps_shape_dtype_finiteness_and_its_input(name: str) -> None:
    defense = CLIENT_DEFENSES.create(name, {})
    delta = honest_delta()
    before = delta.clone()
    out = defense.apply(delta, make_ctx(defense))
    assert isinstance(out, torch.Tensor)
    assert out.shape == delta.shape and out.dtype == delta.dtype
    assert bool(torch.isfinite(out).all()), f"{name}: non-finite output on a finite input"
    assert torch.equal(delta, before), f"{name}.apply modified its input in place"


@pytest.mark.parametrize("name", NAMES)
def test_apply_is_deterministic_for_identical_contexts(name: str) -> None:
    delta = honest_delta()
    outs = []
    for _ in range(2):  # fresh instances, fresh (identical) contexts
        defense = CLIENT_DEFENSES.create(name, {})
        outs.append(defense.apply(delta.clone(), make_ctx(defense)))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("name", NAMES)
def test_inspect_accepts_an_honest_model_of_the_agreed_layout(name: str) -> None:
    defense = CLIENT_DEFENSES.create(name, {})
    for seed in (0, 1):  # the agreed architecture, freshly initialised with two seeds
        model = small_model(seed)
        assert defense.inspect(model, make_ctx(defense, model)) is None


@pytest.mark.parametrize("name", SERVER_NAMES)  # the server-defense registry is empty today
def test_server_defense_apply_keeps_shape_and_is_deterministic(name: str) -> None:
    d = LAYOUT.dim
    update = honest_delta()
    ctx = RoundContext(
        server_round=3,
        seed=5,
        global_vector=model_vector(MODEL, LAYOUT),
        layout=LAYOUT,
        client_ids=(1, 2, 3),
        num_examples=(8, 8, 8),
        num_clients=10,
        expected_clients_per_round=3.0,
    )
    a = SERVER_DEFENSES.create(name, {}).apply(update.clone(), ctx)
    b = SERVER_DEFENSES.create(name, {}).apply(update.clone(), ctx)
    assert a.shape == (d,) and a.dtype == update.dtype and bool(torch.isfinite(a).all())
    assert torch.equal(a, b)
