"""Analytic first-layer inversion (Phong et al. 2018): exact for one example, a documented mixture for two."""

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attacks.inversion.analytic  # noqa: F401  (registers analytic_fc)
from attacks.base import INVERSION_ATTACKS, ProtocolInfo, ServerView, SketchInfo
from attacks.inversion.analytic import AnalyticFC, analytic_input, first_linear_layer
from attacks.metrics import psnr
from simulator.data import DATASETS
from simulator.experiment import client_payload, prepare_leakage
from simulator.flat import flatten, layout_of
from simulator.models import build_model
from simulator.scenario import load_scenario
from simulator.scenario.leakage import LeakageConfig

SCENARIO = "scenarios/leakage_analytic.toml"


@pytest.fixture(scope="module")
def mnist():
    return DATASETS.create("mnist5k", {})


@pytest.fixture(scope="module")
def mlp(mnist):
    return build_model("mlp", {}, input_shape=mnist.input_shape, num_classes=10, seed=3)


def _gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
    return flatten(dict(zip(params, grads)), layout_of(model))


def _view(model, payload, shape, **protocol) -> ServerView:
    return ServerView(
        model=copy.deepcopy(model),
        payload=payload.detach().clone(),
        protocol=ProtocolInfo(**protocol),
        input_shape=shape,
        num_classes=10,
    )


@pytest.mark.parametrize("index", [0, 1234, 4321])
def test_one_digit_is_recovered_exactly_with_its_label(mnist, mlp, index):
    x, y = mnist.x[index : index + 1], mnist.y[index : index + 1]
    view = _view(mlp, _gradient(mlp, x, y), mnist.input_shape, kind="gradient", num_examples=1, batch_size=1)
    rec = AnalyticFC().reconstruct(view)
    assert rec.images.shape == x.shape
    assert float(psnr(rec.images, x)[0]) >= 60.0  # measured: bit-exact (MSE 0, PSNR inf)
    assert float((rec.images - x).abs().max()) < 1e-5
    assert torch.equal(rec.labels, y)
    assert 0 < rec.info["rows_used"] <= 200 and rec.info["rows_total"] == 200
    assert rec.info["residual"] < 1e-6 and not rec.info["mixture"]  # a rank-one gradient: ~2e-8


@pytest.mark.parametrize("lr", [0.05, None])
def test_one_step_update_gives_the_same_image(mnist, mlp, lr):
    x, y = mnist.x[42:43], mnist.y[42:43]
    grad_view = _view(
        mlp, _gradient(mlp, x, y), mnist.input_shape, kind="gradient", num_examples=1, batch_size=1
    )
    delta = client_payload(
        mlp,
        x,
        y,
        cfg=LeakageConfig(protocol="update", local_steps=1, lr=0.05),
        generator=torch.Generator().manual_seed(0),
    )
    # Δ = −η g: the ratio is scale-free, so the server does not even need the public lr
    upd_view = _view(
        mlp,
        delta,
        mnist.input_shape,
        kind="update",
        lr=lr,
        local_steps=1,
        local_epochs=1,
        batch_size=1,
        num_examples=1,
    )
    a, b = AnalyticFC().reconstruct(grad_view), AnalyticFC().reconstruct(upd_view)
    assert torch.allclose(a.images, b.images, atol=1e-5)
    assert float(psnr(b.images, x)[0]) >= 60.0
    assert torch.equal(b.labels, y)  # the sign of Δ_b is flipped back before the argmin


def test_two_examples_give_the_gradient_weighted_mixture(mnist, mlp):
    """Documented behaviour for B > 1: the affine mixture Σ w_n x_n, w_n = ⟨g, g_n⟩ / (B ‖g‖²), Σ w_n = 1."""
    idx = [5, 2600]
    x, y = mnist.x[idx], mnist.y[idx]
    view = _view(mlp, _gradient(mlp, x, y), mnist.input_shape, kind="gradient", num_examples=2, batch_size=2)
    rec = AnalyticFC().reconstruct(view)
    assert rec.images.shape == (2, *mnist.input_shape) and torch.equal(rec.images[0], rec.images[1])
    assert rec.info["mixture"] and rec.info["residual"] > 0.05  # far from rank one
    assert all(float(v) < 40.0 for v in psnr(rec.images, x))  # not exact for either image
    assert set(rec.labels.tolist()) == set(y.tolist())
    # the prediction from per-example first-layer bias gradients (all rows: threshold 0)
    per = [_gradient(mlp, x[i : i + 1], y[i : i + 1]) for i in range(2)]
    bias_slice = layout_of(mlp).slices()["net.1.bias"]
    gn = torch.stack([p[bias_slice].double() for p in per])
    g = gn.mean(0)
    w = (gn @ g) / (2 * (g @ g))
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-9)
    parts = _gradient(mlp, x, y)
    sl = layout_of(mlp).slices()
    mix, _, _ = analytic_input(
        parts[sl["net.1.weight"]].reshape(200, -1), parts[sl["net.1.bias"]], row_threshold=0.0
    )
    expected = (w[:, None] * x.flatten(1).double()).sum(0)
    assert torch.allclose(mix, expected, atol=1e-5)


def test_wrong_protocol_or_model_is_refused_with_a_readable_message(mnist, mlp):
    x, y = mnist.x[:1], mnist.y[:1]
    g = _gradient(mlp, x, y)
    with pytest.raises(ValueError, match="exactly one local SGD step"):
        AnalyticFC().reconstruct(
            _view(
                mlp, g, mnist.input_shape, kind="update", lr=0.1, local_steps=2, num_examples=1, batch_size=1
            )
        )
    with pytest.raises(ValueError, match="unknown number of"):
        AnalyticFC().reconstruct(_view(mlp, g, mnist.input_shape, kind="update", lr=0.1))
    sketched = ServerView(
        model=copy.deepcopy(mlp),
        payload=g,
        protocol=ProtocolInfo(kind="gradient"),
        input_shape=mnist.input_shape,
        num_classes=10,
        sketch=SketchInfo(operator="gaussian_sketch", seed=0, sketch_dim=10),
    )
    with pytest.raises(ValueError, match="de-sketch"):
        AnalyticFC().reconstruct(sketched)
    cnn = build_model("cnn", {}, input_shape=mnist.input_shape, num_classes=10, seed=0)
    with pytest.raises(ValueError, match=r"first parameterised layer.*Conv2d"):
        AnalyticFC().reconstruct(_view(cnn, _gradient(cnn, x, y), mnist.input_shape, kind="gradient"))
    no_bias = nn.Sequential(nn.Flatten(), nn.Linear(784, 16, bias=False), nn.ReLU(), nn.Linear(16, 10))
    with pytest.raises(ValueError, match="Linear without bias"):
        first_linear_layer(no_bias, mnist.input_shape)
    scaled = nn.Sequential(
        nn.Flatten(),
        nn.LayerNorm(784, elementwise_affine=False),
        nn.Linear(784, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )
    with pytest.raises(ValueError, match="does not receive the raw flattened input"):
        first_linear_layer(scaled, mnist.input_shape)
    assert first_linear_layer(mlp, mnist.input_shape) == "net.1"


def test_registered_and_takes_only_the_server_view():
    entry = INVERSION_ATTACKS.get("analytic_fc")
    assert entry.factory is AnalyticFC
    assert list(inspect.signature(AnalyticFC.reconstruct).parameters) == ["self", "view"]
    assert inspect.get_annotations(AnalyticFC.reconstruct, eval_str=True)["view"] is ServerView
    with pytest.raises(ValueError):
        INVERSION_ATTACKS.create("analytic_fc", {"row_threshold": 1.5})


def test_leakage_scenario_is_exact_and_blind_to_the_data():
    # the scenario's mnist5k run is measured in the report; the 8x8 digits keep this test fast
    case = prepare_leakage(load_scenario(SCENARIO, ['data.dataset="digits"', "leakage.images=[11]"]))
    attack = INVERSION_ATTACKS.create("analytic_fc", {})
    before = attack.reconstruct(copy.deepcopy(case.view))
    assert float(psnr(before.images, case.truth_x)[0]) >= 60.0
    assert torch.equal(before.labels, case.truth_y)
    case.truth_x.fill_(float("nan"))  # the victim's data is destroyed after the payload is computed
    case.truth_y.fill_(-1)
    after = attack.reconstruct(copy.deepcopy(case.view))
    assert torch.equal(before.images, after.images) and torch.equal(before.labels, after.labels)
