"""``simulation.memory_format`` (:mod:`simulator.memory_format`): which models train in channels-last, that
the model comes back from training in the contiguous format with the weights it trained to, and that what
cannot be honoured is refused with the field and the fix."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from simulator import load_scenario
from simulator.memory_format import channels_last_for, why_not_channels_last
from simulator.models import build_model
from simulator.runner import RunFailed, run
from simulator.scenario import ScenarioError
from simulator.training import LocalTrainConfig, train_local

SHAPE = (1, 12, 12)


def _model(name: str, **params):
    return build_model(name, params, input_shape=SHAPE, num_classes=10, seed=0)


def test_auto_takes_channels_last_for_the_models_that_measured_faster_on_a_cpu() -> None:
    cnn, lenet, mlp = _model("cnn", channels=[4, 8], hidden=16), _model("lenet", channels=4), _model("mlp")
    resnet_gn = _model("resnet18", width=4)
    assert [channels_last_for(m, "auto") for m in (cnn, lenet, mlp, resnet_gn)] == [True, True, False, False]
    assert not channels_last_for(cnn, "auto", "cuda:0")  # measured on a CPU only
    assert not channels_last_for(cnn, "contiguous")
    assert channels_last_for(mlp, "channels_last")  # asked for: no 4-d tensors, nothing changes
    assert why_not_channels_last(resnet_gn) is not None
    assert why_not_channels_last(_model("resnet18", width=4, norm="none")) is None
    with pytest.raises(ValueError, match=r"ResNet18.*GroupNorm.*'auto' or 'contiguous'"):
        channels_last_for(resnet_gn, "channels_last")


def test_training_in_channels_last_hands_back_a_contiguous_model_with_its_trained_weights() -> None:
    model = _model("cnn", channels=[4, 8], hidden=16)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, *SHAPE, generator=g), torch.randint(0, 10, (20,), generator=g)
    cfg = LocalTrainConfig(epochs=2, batch_size=8, lr=0.05, momentum=0.9, channels_last=True)
    trained = copy.deepcopy(model)
    stats = train_local(trained, x, y, cfg, generator=torch.Generator().manual_seed(1))
    assert stats.steps == 6
    assert all(p.is_contiguous() for p in trained.parameters())
    # the same training, the model kept in channels-last by hand: the same weights, bit for bit
    by_hand = copy.deepcopy(model).to(memory_format=torch.channels_last)
    train_local(
        by_hand,
        x,
        y,
        dataclasses.replace(cfg, channels_last=False),
        generator=torch.Generator().manual_seed(1),
    )
    assert not by_hand.features[3].weight.is_contiguous()
    for (n, p), q in zip(trained.named_parameters(), by_hand.parameters()):
        assert torch.equal(p, q), n
    # and it moved the weights away from the start
    assert not torch.equal(trained.features[0].weight, model.features[0].weight)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["privacy.level='record'"], "Opacus"),
        (["simulation.vectorise_kernels='batched'"], "vectorise_kernels = 'exact'"),
    ],
)
def test_explicit_channels_last_that_cannot_be_honoured_is_refused_at_load(sets, message) -> None:
    with pytest.raises(ScenarioError, match=r"simulation\.memory_format") as err:
        load_scenario("scenarios/quickstart.toml", ["simulation.memory_format='channels_last'", *sets])
    assert message in str(err.value)
    for s in sets:  # without the explicit format the same scenario loads
        load_scenario("scenarios/quickstart.toml", [s])


def test_a_leakage_experiment_refuses_a_memory_format() -> None:
    with pytest.raises(ScenarioError, match=r"simulation\.memory_format.*leakage"):
        load_scenario("scenarios/leakage_analytic.toml", ["simulation.memory_format='channels_last'"])


def test_channels_last_on_a_group_norm_model_is_refused_before_round_one() -> None:
    s = load_scenario(
        "scenarios/quickstart.toml",
        [
            "simulation.memory_format='channels_last'",
            "model.name='resnet18'",
            "model.params={width=4}",
            "federation.rounds=1",
            "data.max_examples=1000",
        ],
    )
    with pytest.raises(RunFailed, match=r"simulation\.memory_format.*GroupNorm"):
        run(s, write=False)
