"""Contract of every registered model, parametrised by registry name × input shape (MNIST-like (1, 28, 28) and
CIFAR-like (3, 32, 32); every model registered today supports both), default params, built with
:func:`simulator.models.build_model`: the forward pass gives finite (batch, num_classes) logits, the same seed
gives identical weights and another seed different ones, and the flat layout round-trips
``model_vector`` / ``load_vector``.
"""

from __future__ import annotations

import pytest
import torch

from simulator.flat import layout_of, load_vector, model_vector
from simulator.models import MODELS, build_model
from simulator.registry import import_plugins

import_plugins()

NAMES = MODELS.names()
SHAPES = [(1, 28, 28), (3, 32, 32)]
NUM_CLASSES = 7  # not 10, so a hard-coded class count shows
BATCH = 3


def build(name: str, shape: tuple[int, ...], seed: int) -> torch.nn.Module:
    return build_model(name, {}, input_shape=shape, num_classes=NUM_CLASSES, seed=seed)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NAMES)
def test_model_contract(name: str, shape: tuple[int, ...]) -> None:
    a, b, c = build(name, shape, 1), build(name, shape, 1), build(name, shape, 2)
    x = torch.rand(BATCH, *shape, generator=torch.Generator().manual_seed(0))
    a.eval()
    with torch.no_grad():
        logits = a(x)
    assert logits.shape == (BATCH, NUM_CLASSES) and logits.dtype == torch.float32
    assert bool(torch.isfinite(logits).all())

    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa), f"{name}: same seed, different weights"
    layout = layout_of(a)
    va, vc = model_vector(a, layout), model_vector(c, layout)
    assert va.shape == (layout.dim,)
    params = {n for n, _ in a.named_parameters()}
    assert params <= set(layout.names), f"{name}: a parameter is not in the update"
    assert not torch.equal(va, vc), f"{name}: another seed gives the same weights"

    # round trip: load seed-1 weights into the seed-2 model; it becomes the seed-1 model
    assert layout_of(c) == layout
    load_vector(c, va, layout)
    assert torch.equal(model_vector(c, layout), va)
    sc = c.state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    c.eval()
    with torch.no_grad():
        assert torch.equal(c(x), logits)
    shifted = va + 0.5
    load_vector(c, shifted)
    assert torch.equal(model_vector(c), shifted)
