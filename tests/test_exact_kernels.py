"""Exact kernels (:mod:`simulator.exact_kernels`): the vectorised cohort with each client's own weight-layer
calls is bit-identical to :func:`simulator.training.train_local` run client by client, for every model family
privsim ships (max-pooling included) and for the layers the kernels cover; what it cannot reproduce is refused
with the reason; and the bit-identity check has teeth (batched kernels fail it)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from simulator import load_scenario
from simulator.exact_kernels import why_not_exact
from simulator.models import build_model
from simulator.runner import run
from simulator.scenario import ScenarioError
from simulator.training import LocalTrainConfig
from simulator.vectorised import Kernels, resolve_kernels, train_cohort, why_not_vectorised
from tests.helpers.cohort_reference import client_data, per_client, vectorised

SHAPE = (1, 12, 12)
CONFIGS = [
    LocalTrainConfig(epochs=2, batch_size=8, lr=0.05, momentum=0.9, weight_decay=1e-3, label_smoothing=0.1),
    LocalTrainConfig(epochs=1, batch_size=5, lr=0.1),  # plain SGD
    LocalTrainConfig(epochs=3, batch_size=4, lr=0.05, momentum=0.5, max_steps=5),  # the step cap
]


def _conv1d_layernorm() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(2), nn.Conv1d(1, 4, 5), nn.LayerNorm(140), nn.ReLU(), nn.Flatten(), nn.Linear(560, 10)
    )


MODELS = {
    "cnn (max-pooling)": lambda: build_model(
        "cnn", {"channels": [4, 8], "hidden": 16}, input_shape=SHAPE, num_classes=10, seed=0
    ),
    "cnn (avg-pooling)": lambda: build_model(
        "cnn", {"channels": [4, 8], "hidden": 16, "pool": "avg"}, input_shape=SHAPE, num_classes=10, seed=0
    ),
    "lenet (sigmoid, strided)": lambda: build_model(
        "lenet", {"channels": 4}, input_shape=SHAPE, num_classes=10, seed=0
    ),
    "resnet18 (group norm)": lambda: build_model(
        "resnet18", {"width": 4}, input_shape=SHAPE, num_classes=10, seed=0
    ),
    "mlp": lambda: build_model("mlp", {"hidden": [16]}, input_shape=SHAPE, num_classes=10, seed=0),
    "conv1d + layer norm": _conv1d_layernorm,
}


def _both(model: nn.Module, cfg: LocalTrainConfig, kernels: Kernels, sizes=(13, 20, 3)):
    data = client_data(sizes, SHAPE)
    return per_client(model, data, cfg), vectorised(model, data, cfg, kernels)


# every model in the contiguous format; in channels-last all but GroupNorm's (refused: test_memory_format.py)
FORMATS = [(n, "contiguous") for n in MODELS] + [
    (n, "channels-last") for n in MODELS if n != "resnet18 (group norm)"
]


@pytest.mark.parametrize(("name", "fmt"), FORMATS)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_exact_kernels_are_bit_identical_to_the_per_client_loop(
    name: str, fmt: str, cfg: LocalTrainConfig
) -> None:
    """Clients of 13, 20 and 3 examples: short last batches, and clients with no batch in later steps. In
    channels-last (``simulation.memory_format``) both sides train in it: the per-client loop converts the
    model, the exact kernels give each client's call the same formats."""
    if fmt == "channels-last":
        cfg = dataclasses.replace(cfg, channels_last=True)
    model = MODELS[name]()
    assert why_not_vectorised(model, cfg, "exact") is None
    want, got = _both(model, cfg, "exact")
    for (wp, ws), (gp, gs) in zip(want, got):
        assert (gs.steps, gs.num_examples) == (ws.steps, ws.num_examples)
        assert gs.loss == pytest.approx(ws.loss, rel=1e-5)  # the reported loss sums in another order
        for n, p in wp.items():
            assert torch.equal(gp[n], p), (name, n, float((gp[n] - p).abs().max()))
    steps = [s.steps for _, s in got]
    assert len(set(steps)) > 1 or cfg.max_steps  # masking ran


def test_the_bit_identity_check_has_teeth() -> None:
    """The same comparison with batched kernels (grouped convolutions) is not bit-identical, only close."""
    model = MODELS["cnn (avg-pooling)"]()  # batched kernels refuse max-pooling
    cfg = CONFIGS[1]
    want, got = _both(model, cfg, "batched")
    same = [torch.equal(gp[n], p) for (wp, _), (gp, _) in zip(want, got) for n, p in wp.items()]
    assert not all(same)
    for (wp, _), (gp, _) in zip(want, got):
        for n, p in wp.items():
            assert torch.allclose(gp[n], p, rtol=1e-4, atol=1e-5), n


@pytest.mark.parametrize("name", ["cnn (max-pooling)", "lenet (sigmoid, strided)"])
def test_channels_last_changes_the_numerics_and_the_kernels_mirror_it(name: str) -> None:
    """The channels-last check has teeth: per-client training in channels-last is not bit-identical to the
    contiguous one, and exact kernels that do not mirror the format (each client's call in the stacked
    tensors' contiguous format) do not reproduce it."""
    model = MODELS[name]()
    cfg = dataclasses.replace(CONFIGS[0], channels_last=True)
    data = client_data((13, 20, 3), SHAPE)
    want = per_client(model, data, cfg)
    contiguous = per_client(model, data, dataclasses.replace(cfg, channels_last=False))
    unmirrored = vectorised(model, data, dataclasses.replace(cfg, channels_last=False), "exact")
    for other in (contiguous, unmirrored):
        same = [torch.equal(op[n], p) for (wp, _), (op, _) in zip(want, other) for n, p in wp.items()]
        assert not all(same)
    for (wp, _), (op, _) in zip(want, contiguous):
        for n, p in wp.items():
            assert torch.allclose(op[n], p, rtol=1e-3, atol=1e-5), n  # another rounding, not another recipe


def test_auto_picks_exact_kernels_for_conv_nets_and_batched_for_dense_ones() -> None:
    assert resolve_kernels(MODELS["cnn (max-pooling)"]()) == "exact"
    assert resolve_kernels(MODELS["resnet18 (group norm)"]()) == "exact"
    assert resolve_kernels(MODELS["mlp"]()) == "batched"
    assert resolve_kernels(MODELS["mlp"](), "exact") == "exact"


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(144, 10)
        self.scale = nn.Parameter(torch.ones(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * self.scale


def test_weights_outside_the_covered_layers_are_refused_with_the_reason() -> None:
    hard = nn.Sequential(nn.Flatten(), nn.Linear(144, 10), nn.Hardsigmoid())
    assert "Hardsigmoid" in (why_not_exact(hard) or "")
    why = why_not_exact(_Scaled())
    assert why is not None and "_Scaled" in why and "Linear" in why
    assert why_not_vectorised(_Scaled(), CONFIGS[1], "exact") == why
    assert why_not_vectorised(_Scaled(), CONFIGS[1], "batched") is None
    with pytest.raises(ValueError, match="_Scaled"):
        train_cohort(_Scaled(), [], CONFIGS[1], "exact")


class _AcrossTheBatch(nn.Module):
    """A linear layer applied across the batch (input transposed): its rows are not the examples."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(8, 8)
        self.fc = nn.Linear(144, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.mix(x.flatten(1).t()).t())


def test_a_layer_whose_rows_are_not_the_examples_is_refused() -> None:
    with pytest.raises(ValueError, match="batch first"):
        _both(_AcrossTheBatch(), LocalTrainConfig(epochs=1, batch_size=8, lr=0.1), "exact", sizes=(16, 16))


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_a_max_pooling_cnn_run_is_the_same_vectorised_or_per_client(fmt: str) -> None:
    """A whole run (the round core, FedAvg, evaluation) of a max-pooling CNN: per-round accuracy and loss are
    equal, not close, with the cohort vectorised on exact kernels and with every client trained alone, in
    either memory format."""
    base = [
        f"simulation.memory_format='{fmt}'",
        "data.max_examples=500",
        "data.num_clients=6",
        "federation.clients_per_round=4",
        "federation.rounds=2",
        "federation.local_epochs=1",
        "federation.batch_size=16",
        "model.params={channels=[4], hidden=16}",
        "simulation.engine='inline'",
        "simulation.workers=1",
    ]

    def curve(*extra: str):
        r = run(load_scenario("scenarios/quickstart.toml", [*base, *extra]), write=False)
        return [(x.main_accuracy, x.main_loss) for x in r.rounds]

    per_client = curve("simulation.vectorise='off'")
    vectorised = curve("simulation.vectorise='on'", "simulation.vectorise_kernels='exact'")
    assert vectorised == per_client
    assert len(per_client) == 2 and all(a is not None for a, _ in per_client)


def test_kernels_without_vectorising_are_refused_at_load() -> None:
    with pytest.raises(ScenarioError, match=r"simulation: vectorise_kernels = 'exact'.*vectorise = 'off'"):
        load_scenario(
            "scenarios/quickstart.toml",
            ["simulation.vectorise='off'", "simulation.vectorise_kernels='exact'"],
        )
