"""Contract every registered client attack keeps, with its default params (a new plug-in gets these
checks for free): poison keeps image shape and valid labels, hooks run inside train_local,
transform keeps the update's shape, the backdoor test set is labelled with the target."""

from __future__ import annotations

import pytest
import torch

import attacks  # noqa: F401  (registers every plug-in)
from attacks.base import CLIENT_ATTACKS
from simulator.context import ClientContext
from simulator.data.base import ArrayDataset
from simulator.flat import layout_of, model_vector
from simulator.models import build_model
from simulator.training import LocalTrainConfig, train_local

NUM_CLASSES = 10


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % NUM_CLASSES


@pytest.mark.parametrize("name", CLIENT_ATTACKS.names())
def test_client_attack_contract(name):
    atk = CLIENT_ATTACKS.create(name, {})
    pool = ArrayDataset(*_data(1500, 0), num_classes=NUM_CLASSES)
    reserved = atk.reserve(pool)
    if reserved is not None:
        ids = [int(i) for i in reserved]
        assert len(set(ids)) == len(ids) and all(0 <= i < len(pool) for i in ids)
    model = build_model(
        "cnn", {"channels": [4, 8], "hidden": 16}, input_shape=(1, 28, 28), num_classes=NUM_CLASSES, seed=0
    )
    layout = layout_of(model)
    ctx = ClientContext(
        partition_id=3,
        server_round=2,
        seed=0,
        num_examples=120,
        global_vector=model_vector(model, layout),
        layout=layout,
        train=LocalTrainConfig(batch_size=32, lr=0.05),
        num_clients=20,
        expected_clients_per_round=10.0,
        malicious=True,
        colluders=(3, 9),
    )
    x, y = _data(120, 1)
    xp, yp = atk.poison(x, y, ctx)
    assert xp.shape[1:] == x.shape[1:] and xp.dtype == x.dtype and xp.shape[0] > 0
    assert yp.shape == (xp.shape[0],) and yp.dtype == torch.int64
    assert int(yp.min()) >= 0 and int(yp.max()) < NUM_CLASSES
    assert float(xp.min()) >= 0.0 and float(xp.max()) <= 1.0
    stats = train_local(
        model,
        xp,
        yp,
        LocalTrainConfig(epochs=1, batch_size=32, lr=0.05, max_steps=3),
        generator=torch.Generator().manual_seed(0),
        hooks=atk.hooks(ctx),
    )
    assert stats.steps == 3 and torch.isfinite(torch.tensor(stats.loss))
    delta = model_vector(model, layout) - ctx.global_vector
    out = atk.transform(delta, ctx)
    assert out.shape == delta.shape and out.dtype == delta.dtype and torch.isfinite(out).all()
    bd = atk.backdoor_testset(*_data(200, 2))
    if atk.target_label is None:  # an untargeted client attack (label flipping): no backdoor to measure
        assert bd is None, "an untargeted attack has no backdoor test set"
        return
    assert bd is not None, "a backdoor attack must give the evaluator a backdoor test set"
    xb, yb = bd
    assert xb.shape[1:] == x.shape[1:] and xb.shape[0] == yb.shape[0] > 0
    assert atk.target_label is not None and torch.all(yb == atk.target_label)
