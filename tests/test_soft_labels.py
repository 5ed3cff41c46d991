"""Soft-label and feature recovery from one example's last-layer gradient (Wang, Liang & He, ICLR 2024)."""

import copy
import dataclasses
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attacks.inversion.soft_label  # noqa: F401  (registers soft_label)
from attacks.base import INVERSION_ATTACKS, ProtocolInfo, ServerView
from attacks.inversion.soft_label import SoftLabelAttack, implied_labels, label_objective, recover_soft_label
from attacks.labels import last_linear
from attacks.metrics import psnr
from simulator.data import DATASETS
from simulator.experiment import gradient_view, last_layer_case
from simulator.models import build_model

K = 10
# measured on these cases (float32 gradients): mean L1 ≈ 1e-7 ("bias" form), ≈ 5e-7 ("weight" form),
# max L1 < 2e-6, feature cosine 1 − 1e-12; the tolerances leave a wide margin over round-off only
L1_TOL = 1e-5
LAM0_TOL = 1e-5


@pytest.fixture(scope="module")
def digits():
    return DATASETS.create("digits", {})


def _models(shape):
    return {
        "mlp": build_model("mlp", {"hidden": [48, 32]}, input_shape=shape, num_classes=K, seed=11),
        "cnn": build_model(
            "cnn", {"channels": [6, 12], "hidden": 32}, input_shape=shape, num_classes=K, seed=12
        ),
    }


@pytest.fixture(scope="module")
def models(digits):
    return _models(digits.input_shape)


def _smoothed(y: int, eps: float) -> torch.Tensor:
    return F.one_hot(torch.tensor(y), K).double() * (1 - eps) + eps / K


def _mixup(digits, g):
    """A mixup pair of distinct classes and λ₀ ∈ [0.55, 0.95]."""
    while True:
        a, b = torch.randint(0, len(digits), (2,), generator=g).tolist()
        if digits.y[a] != digits.y[b]:
            break
    lam0 = 0.55 + 0.4 * float(torch.rand(1, generator=g))
    x = lam0 * digits.x[a : a + 1] + (1 - lam0) * digits.x[b : b + 1]
    y = (
        lam0 * F.one_hot(digits.y[a : a + 1], K).float()
        + (1 - lam0) * F.one_hot(digits.y[b : b + 1], K).float()
    )
    return x, y, int(digits.y[a]), int(digits.y[b]), lam0


@pytest.mark.parametrize("implied", ["auto", "weight"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_label_smoothing_is_recovered_with_the_feature(digits, models, name, implied):
    model = models[name]
    g = torch.Generator().manual_seed(0)
    hits, l1, cos = 0, [], []
    cases = [(int(i), eps) for eps in (0.1, 0.2) for i in torch.randint(0, len(digits), (16,), generator=g)]
    for i, eps in cases:  # 32 single-image gradients per model
        gw, gb, w, b, f = last_layer_case(
            model, digits.x[i : i + 1], digits.y[i : i + 1], label_smoothing=eps
        )
        res = recover_soft_label(
            grad_weight=gw, grad_bias=gb, weight=w, bias=b, kind="smoothing", implied=implied
        )
        truth = _smoothed(int(digits.y[i]), eps)
        hits += int(int(res.label.argmax()) == int(digits.y[i]))
        l1.append(float((res.label - truth).abs().sum()))
        cos.append(float(F.cosine_similarity(res.feature, f.double(), dim=0)))
        assert float(res.label.sum()) == pytest.approx(1.0, abs=1e-6)  # Theorem 1 (up to float32 ∇)
    assert hits / len(cases) >= 0.95
    assert float(np.mean(l1)) < L1_TOL
    assert min(cos) > 0.999


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_mixup_gives_both_classes_and_the_mixing_weight(digits, models, name):
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        x, y, a, b, lam0 = _mixup(digits, g)
        gw, gb, w, bias, f = last_layer_case(models[name], x, y)
        res = recover_soft_label(grad_weight=gw, grad_bias=gb, weight=w, bias=bias, kind="mixup")
        top2 = torch.topk(res.label, 2).indices.tolist()
        assert top2 == [a, b]
        assert float(res.label[a]) == pytest.approx(lam0, abs=LAM0_TOL)
        assert float(res.label[b]) == pytest.approx(1 - lam0, abs=LAM0_TOL)
        assert float(F.cosine_similarity(res.feature, f.double(), dim=0)) > 0.999


@pytest.mark.parametrize("kind", ["smoothing", "mixup"])
def test_found_lambda_is_the_dense_grid_minimiser(digits, models, kind):
    g = torch.Generator().manual_seed(2)
    for name in ("mlp", "cnn"):
        for _ in range(2):
            if kind == "mixup":
                x, y, *_ = _mixup(digits, g)
                case = last_layer_case(models[name], x, y)
            else:
                i = int(torch.randint(0, len(digits), (1,), generator=g))
                case = last_layer_case(
                    models[name], digits.x[i : i + 1], digits.y[i : i + 1], label_smoothing=0.2
                )
            gw, gb, w, b, f = (t.double() for t in case)
            res = recover_soft_label(grad_weight=gw, grad_bias=gb, weight=w, bias=b, kind=kind)
            r = gw[int(torch.argmax(gw.sum(1).abs()))]
            # brute force: 160 002 points over both signs and eight decades of |λ| (logit scale 1e-5 … 1e3)
            s0 = 1.0 / float((w @ r).abs().max())
            mags = s0 * 10 ** torch.linspace(-5, 3, 80_001, dtype=torch.float64)
            lams = torch.cat([mags, -mags])
            obj = label_objective(
                implied_labels(lams, row=r, weight=w, bias=b, grad_weight=gw, grad_bias=gb), kind
            )
            brute = float(lams[int(torch.argmin(obj))])
            assert res.lam == pytest.approx(brute, rel=1e-3)
            assert res.objective <= float(obj.min()) + 1e-15
            true_lam = float(f @ r / (r @ r))  # the truth: f = λ r exactly
            assert res.lam == pytest.approx(true_lam, rel=1e-5)


def test_hard_labels_and_a_layer_without_bias(digits, models):
    i = 100
    gw, _, w, b, _ = last_layer_case(models["mlp"], digits.x[i : i + 1], digits.y[i : i + 1])
    # a hard label (ε = 0), read with the "weight" form (no bias gradient given)
    res = recover_soft_label(grad_weight=gw, grad_bias=None, weight=w, bias=b, kind="smoothing")
    assert torch.allclose(res.label, F.one_hot(digits.y[i], K).double(), atol=1e-5)
    nobias = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, K, bias=False))
    torch.manual_seed(0)
    for m in nobias.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.3)
    wname, _ = last_linear(nobias)
    y = _smoothed(int(digits.y[i]), 0.1).float()[None]
    feats = nobias[:3](digits.x[i : i + 1])[0].detach()
    loss = -(y * torch.log_softmax(nobias(digits.x[i : i + 1]), -1)).sum()
    (gw,) = torch.autograd.grad(loss, [dict(nobias.named_parameters())[wname]])
    res = recover_soft_label(
        grad_weight=gw, grad_bias=None, weight=nobias[3].weight, bias=None, kind="smoothing"
    )
    assert torch.allclose(res.label, y[0].double(), atol=1e-5)
    assert float(F.cosine_similarity(res.feature, feats.double(), dim=0)) > 0.999


def test_inputs_that_cannot_work_are_refused(digits, models):
    gw, gb, w, b, _ = last_layer_case(models["mlp"], digits.x[:1], digits.y[:1], label_smoothing=0.1)
    with pytest.raises(ValueError, match="weight gradient is zero"):
        recover_soft_label(grad_weight=torch.zeros_like(gw), grad_bias=gb, weight=w, bias=b)
    with pytest.raises(ValueError, match="at least 4 classes"):
        recover_soft_label(grad_weight=gw[:3], grad_bias=gb[:3], weight=w[:3], bias=b[:3], kind="mixup")
    with pytest.raises(ValueError, match="unknown soft-label kind"):
        recover_soft_label(grad_weight=gw, grad_bias=gb, weight=w, bias=b, kind="cutmix")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs the bias gradient"):
        recover_soft_label(grad_weight=gw, grad_bias=None, weight=w, bias=b, implied="bias")


# --- the registered attack, on a ServerView
# only -------------------------------------------------------------


def _view(model, x, y, *, eps=0.0, protocol=None, lr: float | None = 0.05) -> ServerView:
    view = gradient_view(model, x, y, label_smoothing=eps)
    if protocol != "update":
        return view
    # one local SGD step: Δ = −η g; the client's lr is 0.05, ``lr`` is what the server is told (None: unknown)
    info = ProtocolInfo(
        kind="update",
        lr=lr,
        local_steps=1,
        local_epochs=1,
        batch_size=int(x.shape[0]),
        num_examples=int(x.shape[0]),
    )
    return dataclasses.replace(view, payload=-0.05 * view.payload, protocol=info)


@pytest.mark.parametrize("protocol", ["gradient", "update"])
@pytest.mark.parametrize("implied", ["auto", "weight"])
def test_attack_on_an_mlp_gives_label_soft_label_and_the_exact_image(digits, models, protocol, implied):
    i = 321
    x, y = digits.x[i : i + 1], digits.y[i : i + 1]
    view = _view(models["mlp"], x, y, eps=0.2, protocol=protocol)
    rec = SoftLabelAttack(implied=implied).reconstruct(view)
    assert torch.equal(rec.labels, y)
    assert np.abs(np.array(rec.info["soft_label"]) - _smoothed(int(y), 0.2).numpy()).sum() < L1_TOL
    assert rec.info["image_method"] == "analytic" and len(rec.info["feature"]) == 32
    assert float(psnr(rec.images, x)[0]) >= 60.0


def test_an_update_without_its_learning_rate_is_refused(digits, models):
    """The label equations are not scale-free: −Δ = η g at the true feature implies p − η (p − y)."""
    view = _view(models["mlp"], digits.x[:1], digits.y[:1], eps=0.2, protocol="update", lr=None)
    with pytest.raises(ValueError, match="public local learning rate"):
        SoftLabelAttack().reconstruct(view)


def test_attack_on_a_cnn_optimises_with_the_soft_label(digits, models):
    i = 7
    x, y = digits.x[i : i + 1], digits.y[i : i + 1]
    view = _view(models["cnn"], x, y, eps=0.1)
    short = SoftLabelAttack(iterations=2).reconstruct(copy.deepcopy(view))
    longer = SoftLabelAttack(iterations=24, feature_weight=1.0).reconstruct(copy.deepcopy(view))
    assert short.info["image_method"] == longer.info["image_method"] == "optimise"
    assert torch.equal(longer.labels, y)
    assert (
        longer.images.shape == x.shape and float(longer.images.min()) >= 0 and float(longer.images.max()) <= 1
    )
    assert longer.losses[0] < short.losses[0]  # the gradient-matching loss goes down
    with pytest.raises(ValueError, match="first parameterised layer"):
        SoftLabelAttack(image="analytic").reconstruct(copy.deepcopy(view))


def test_attack_refuses_batches_and_multi_step_updates(digits, models):
    view = _view(models["mlp"], digits.x[:2], digits.y[:2])
    with pytest.raises(ValueError, match="covers 2 examples"):
        SoftLabelAttack().reconstruct(view)
    one = _view(models["mlp"], digits.x[:1], digits.y[:1])
    multi = ServerView(
        model=one.model,
        payload=one.payload,
        input_shape=one.input_shape,
        num_classes=K,
        protocol=ProtocolInfo(kind="update", lr=0.1, local_steps=3, num_examples=1, batch_size=1),
    )
    with pytest.raises(ValueError, match="exactly one local SGD step"):
        SoftLabelAttack().reconstruct(multi)


def test_registered_and_blind_to_the_data(digits, models):
    entry = INVERSION_ATTACKS.get("soft_label")
    assert entry.factory is SoftLabelAttack
    assert list(inspect.signature(SoftLabelAttack.reconstruct).parameters) == ["self", "view"]
    assert inspect.get_annotations(SoftLabelAttack.reconstruct, eval_str=True)["view"] is ServerView
    for field in entry.params.model_fields.values():
        assert "Tensor" not in str(field.annotation)
    x, y = digits.x[9:10].clone(), digits.y[9:10].clone()
    view = _view(models["mlp"], x, y, eps=0.1)
    attack = INVERSION_ATTACKS.create("soft_label", {"kind": "smoothing"})
    before = attack.reconstruct(copy.deepcopy(view))
    x.fill_(float("nan"))
    y.fill_(-1)
    after = attack.reconstruct(copy.deepcopy(view))
    assert torch.equal(before.images, after.images) and before.info["soft_label"] == after.info["soft_label"]
