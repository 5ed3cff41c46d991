"""Contract of every registered data set that ships with an installed package
(``simulator.data.embedded``: "no download ever happens here"), parametrised by registry name, default
params: it loads with the network blocked, ``x`` is a float32 (N, C, H, W) tensor in [0, 1] whose shape is
``input_shape`` (and ``size`` × ``size`` when the data set takes a ``size``), ``y`` holds int64 labels in
[0, num_classes) with every class present, class names (if any) match the class count, and loading twice
gives identical tensors.

Loaders defined elsewhere (the Hugging Face hub and torchvision loaders of ``simulator.data.hub``) need a
download and are listed as skipped; ``tests/test_data.py`` runs them on local data.
"""

from __future__ import annotations

import socket

import pytest
import torch

from simulator.data.base import DATASETS
from simulator.registry import import_plugins

import_plugins()

OFFLINE_MODULE = "simulator.data.embedded"


def _case(name: str):
    if DATASETS.get(name).factory.__module__ == OFFLINE_MODULE:
        return name
    return pytest.param(name, marks=pytest.mark.skip(reason=f"{name!r} is not embedded: it needs a download"))


CASES = [_case(n) for n in DATASETS.names()]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an embedded data set tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("name", CASES)
def test_embedded_dataset_contract(name: str) -> None:
    ds = DATASETS.create(name, {})
    x, y = ds.x, ds.y
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.ndim == 4
    assert len(ds) > 0 and tuple(x.shape[1:]) == ds.input_shape
    assert ds.input_shape[0] in (1, 3), f"{name}: {ds.input_shape[0]} channels"
    size = DATASETS.validate(name, {}).model_dump().get("size")
    if size is not None:
        assert ds.input_shape[1:] == (size, size)
    assert bool(torch.isfinite(x).all()) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x.std()) > 0.01, f"{name}: the images are (nearly) constant"

    assert isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.shape == (len(ds),)
    assert ds.num_classes >= 2
    assert int(y.min()) >= 0 and int(y.max()) < ds.num_classes
    assert set(y.unique().tolist()) == set(range(ds.num_classes)), f"{name}: a class has no example"
    assert ds.class_names == () or len(ds.class_names) == ds.num_classes

    again = DATASETS.create(name, {})
    assert torch.equal(again.x, x) and torch.equal(again.y, y) and again.num_classes == ds.num_classes
