"""DPSGD-F (Sun, Suresh & Menon, ICLR 2024: private centring and scaling, then DP-SGD) on a CNN.

The first layer of the CNN is a convolution; the client trains in the transformed space through a forward
pre-hook and weight maps (``simulator/dp/dpsgd_f.py``). Checked against independent computations:

* the transformed model on ``x'`` equals the raw model on ``x`` (unclipped points), and the round trip
  restores the weights, the padding and the hooks;
* one DP-SGD step of the whole record-level mechanism (noise ≈ 0, one batch of all examples) equals a
  brute-force per-example loop written with ``F.conv2d`` on an explicitly centred, padded input: per-example
  gradients in the transformed space, each clipped to C, averaged, one SGD step, mapped back by the formulas.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simulator.context import ClientContext
from simulator.dp.dpsgd_f import (
    FeatureTransform,
    first_layer,
    private_feature_transform,
    to_raw_space,
    to_transformed_space,
)
from simulator.dp.mechanism import RecordLevelDP
from simulator.flat import layout_of, model_vector
from simulator.models import build_model
from simulator.scenario.privacy import RecordDPConfig
from simulator.training import LocalTrainConfig

SHAPE = (3, 8, 8)
N = 12


def _cnn() -> nn.Module:
    return build_model("cnn", {"channels": [4, 6], "hidden": 8}, input_shape=SHAPE, num_classes=5, seed=0)


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N, *SHAPE, generator=g), torch.randint(0, 5, (N,), generator=g)


def _transform(x: torch.Tensor) -> FeatureTransform:
    """A transform with a non-constant per-pixel mean and a radius that leaves every example unclipped."""
    g = torch.Generator().manual_seed(3)
    mean = x.reshape(N, -1).double().mean(0) + 0.1 * torch.randn(
        x[0].numel(), generator=g, dtype=torch.float64
    )
    radius = float((x.reshape(N, -1).double() - mean).norm(dim=1).max()) * 1.5
    return FeatureTransform(mean, radius)


def test_first_layer_is_the_convolution() -> None:
    model = _cnn()
    assert first_layer(model) is model.features[0]
    with pytest.raises(ValueError, match=r"nn\.Linear or nn\.Conv2d"):
        first_layer(nn.Sequential(nn.GroupNorm(1, 3), nn.Conv2d(3, 4, 3)))


def test_cnn_maps_are_exact_on_unclipped_points() -> None:
    x, _ = _data()
    t = _transform(x)
    model = _cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    raw = model(x)
    xt = t.apply(x)
    assert torch.allclose(
        xt.reshape(N, -1).double(), (x.reshape(N, -1).double() - t.mean) / t.radius, atol=1e-6
    )
    to_transformed_space(model, t)
    conv = model.features[0]
    assert conv.padding == (0, 0) and len(conv._forward_pre_hooks) == 1
    assert not torch.allclose(conv.bias, before["features.0.bias"])  # the centring went into the bias
    assert torch.allclose(model(xt), raw, atol=1e-5)
    with pytest.raises(ValueError, match="already"):
        to_transformed_space(model, t)
    to_raw_space(model, t)
    assert conv.padding == (2, 2) and len(conv._forward_pre_hooks) == 0
    for k, v in model.state_dict().items():
        assert torch.allclose(v, before[k], atol=1e-6), k
    assert torch.allclose(model(x), raw, atol=1e-5)


def _ctx(model: nn.Module, state: dict, lr: float) -> ClientContext:
    return ClientContext(
        partition_id=0,
        server_round=1,
        seed=0,
        num_examples=N,
        global_vector=model_vector(model),
        layout=layout_of(model),
        train=LocalTrainConfig(epochs=1, batch_size=N, lr=lr),
        num_clients=2,
        expected_clients_per_round=2.0,
        state=state,
    )


def _brute_force_step(
    params: dict[str, torch.Tensor],
    t: FeatureTransform,
    x: torch.Tensor,
    y: torch.Tensor,
    clip: float,
    lr: float,
) -> tuple[dict[str, torch.Tensor], int]:
    """One DP-SGD step (no noise) in the transformed space by a per-example loop, mapped back to raw weights;
    also returns how many examples had their gradient clipped."""
    m = t.mean.reshape(SHAPE[0], -1).mean(1)  # per-channel mean of μ̃
    w1, b1 = params["features.0.weight"].double(), params["features.0.bias"].double()
    tp = {k: v.double().clone() for k, v in params.items()}
    tp["features.0.weight"] = w1 * t.radius
    tp["features.0.bias"] = b1 + (w1 * m.reshape(1, -1, 1, 1)).sum((1, 2, 3))
    xt = t.apply(x).double()
    mean_img = t.mean.reshape(SHAPE)

    def forward(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        # the raw image, zero padded, centred per channel and scaled: x' + μ̃/r̃ − m/r̃ inside, −m/r̃ outside
        inp = F.pad(xi + mean_img / t.radius, (2, 2, 2, 2)) - (m / t.radius).reshape(1, -1, 1, 1)
        h = F.max_pool2d(F.relu(F.conv2d(inp, p["features.0.weight"], p["features.0.bias"])), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, p["features.3.weight"], p["features.3.bias"], padding=2)), 2)
        h = F.relu(F.linear(h.flatten(1), p["head.1.weight"], p["head.1.bias"]))
        return F.linear(h, p["head.3.weight"], p["head.3.bias"])

    names = list(tp)
    total = {k: torch.zeros_like(v) for k, v in tp.items()}
    clipped = 0
    for i in range(N):
        leaves = {k: v.clone().requires_grad_(True) for k, v in tp.items()}
        loss = F.cross_entropy(forward(leaves, xt[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, [leaves[k] for k in names])
        norm = float(torch.sqrt(sum((g**2).sum() for g in grads)))
        scale = min(1.0, clip / (norm + 1e-6))  # Opacus: C / (‖g‖ + 1e-6), capped at 1
        clipped += scale < 1.0
        for k, g in zip(names, grads):
            total[k] += g * scale
    new = {k: tp[k] - lr * total[k] / N for k in names}
    w1n = new["features.0.weight"] / t.radius
    new["features.0.weight"] = w1n
    new["features.0.bias"] = new["features.0.bias"] - (w1n * m.reshape(1, -1, 1, 1)).sum((1, 2, 3))
    return new, clipped


@pytest.mark.filterwarnings("ignore::UserWarning")  # Opacus: secure RNG off, tiny noise
def test_dpsgd_f_step_on_the_cnn_matches_a_per_example_loop() -> None:
    x, y = _data(1)
    model = _cnn()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    clip, lr = 0.5, 0.5
    cfg = RecordDPConfig(
        noise_multiplier=1e-9,  # Opacus adds N(0, (zC)²): ≈ 0, so the step is the clipped mean gradient
        max_grad_norm=clip,
        feature_preprocessing="dpsgd_f",
        preprocessing_noise_multiplier=1.0,
        preprocessing_quantile=0.9,
        feature_clip_norm=20.0,
        poisson_sampling=False,  # one shuffled batch of all N examples: one deterministic step
        accountant="rdp",
    )
    state: dict = {}
    stats, metrics = RecordLevelDP(cfg, delta=1e-5, rounds=1).client_train(
        model, x, y, _ctx(model, state, lr), {}, None
    )
    assert stats.steps == 1
    t = FeatureTransform.from_state(state)
    assert t is not None
    assert t.radius > 0 and torch.isfinite(t.mean).all()
    # the mechanism left the shared model in the raw space: padding and hooks restored
    assert model.features[0].padding == (2, 2) and not model.features[0]._forward_pre_hooks
    want, clipped = _brute_force_step(start, t, x, y, clip, lr)
    assert clipped > 0  # the clip is active on some examples
    got = model.state_dict()
    for k, v in want.items():
        assert torch.allclose(got[k].double(), v, atol=2e-5, rtol=1e-4), k
    # the two preprocessing releases were paid (and DP-SGD's step after them)
    rows = np.asarray(metrics["dp-rows"]).reshape(-1, 3)
    assert rows[:2].tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]


def test_private_transform_of_images_is_per_pixel() -> None:
    x, _ = _data()
    t, rows = private_feature_transform(
        x, bound=20.0, noise_multiplier=0.5, quantile=0.9, generator=torch.Generator().manual_seed(0)
    )
    assert t.mean.shape == (x[0].numel(),) and rows == [(0.5, 1.0, 1), (0.5, 1.0, 1)]
