"""Record level: Opacus DP-SGD pass-through ε, per-example clipping, DPSGD-F composition, input
perturbation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dp_accounting import dp_event as E
from dp_accounting.pld import PLDAccountant
from opacus.accountants import PRVAccountant, RDPAccountant

from simulator.context import ClientContext
from simulator.dp.dpsgd import opacus_epsilon, train_dpsgd
from simulator.dp.dpsgd_f import private_feature_transform, to_raw_space, to_transformed_space
from simulator.dp.input_perturbation import input_perturbation_epsilon
from simulator.dp.mechanism import HISTORY_KEY, RecordLevelDP
from simulator.flat import layout_of, model_vector
from simulator.models import build_model
from simulator.scenario.privacy import RecordDPConfig
from simulator.training import LocalTrainConfig


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _g(s: int) -> torch.Generator:
    return torch.Generator().manual_seed(s)


@pytest.mark.parametrize("accountant,cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_opacus_epsilon_passed_through_unchanged(accountant: str, cls: type) -> None:
    x, y = _data()
    model = build_model("mlp", {"hidden": [16]}, input_shape=(1, 28, 28), num_classes=10, seed=0)
    cfg = LocalTrainConfig(epochs=2, batch_size=16, lr=0.1)
    res = train_dpsgd(
        model,
        x,
        y,
        cfg,
        noise_multiplier=1.1,
        max_grad_norm=1.0,
        delta=1e-5,
        generator=_g(1),
        noise_generator=_g(2),
        accountant=accountant,
    )
    q = 1 / 4  # 64 examples, batch 16: Opacus's q = 1/len(loader)
    assert res.sample_rate == q and res.stats.steps == 8
    ref = cls()
    for _ in range(8):
        ref.step(noise_multiplier=1.1, sample_rate=q)
    assert res.epsilon == ref.get_epsilon(1e-5)
    # a second participation continues the same history (cumulative ε)
    res2 = train_dpsgd(
        model,
        x,
        y,
        cfg,
        noise_multiplier=1.1,
        max_grad_norm=1.0,
        delta=1e-5,
        generator=_g(3),
        noise_generator=_g(4),
        accountant=accountant,
        history=res.history,
    )
    for _ in range(8):
        ref.step(noise_multiplier=1.1, sample_rate=q)
    assert res2.epsilon == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    assert res2.epsilon > res.epsilon


@pytest.mark.parametrize("clipping", ["flat", "per_layer"])
def test_per_example_clipping_matches_one_at_a_time_reference(clipping: str) -> None:
    # z ≈ 0, one full-batch step with plain SGD at lr = 1: the update is −(1/n)·Σ clip(g_i, C); each g_i is
    # recomputed one example at a time and clipped here independently of Opacus
    x, y = _data(12)
    model = build_model("mlp", {"hidden": [8]}, input_shape=(1, 28, 28), num_classes=10, seed=1)
    ref_model = copy.deepcopy(model)
    c = 0.05
    params = list(ref_model.parameters())
    per_layer_c = c / np.sqrt(len(params))
    clipped = []
    for i in range(12):
        grads = torch.autograd.grad(F.cross_entropy(ref_model(x[i : i + 1]), y[i : i + 1]), params)
        flat = torch.cat([g.reshape(-1) for g in grads])
        if clipping == "flat":
            cg = flat * min(1.0, c / float(flat.norm()))
        else:
            cg = torch.cat([g.reshape(-1) * min(1.0, per_layer_c / float(g.norm())) for g in grads])
        assert float(cg.norm()) <= c * (1 + 1e-5)  # every clipped per-example gradient has norm ≤ C
        clipped.append(cg)
    expected = -torch.stack(clipped).mean(0)
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    train_dpsgd(
        model,
        x,
        y,
        LocalTrainConfig(epochs=1, batch_size=12, lr=1.0),
        noise_multiplier=1e-9,
        max_grad_norm=c,
        delta=1e-5,
        generator=_g(0),
        noise_generator=_g(0),
        clipping=clipping,
        poisson_sampling=False,
        accountant="rdp",
    )
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.allclose(after - before, expected, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ew", "ghost"])
def test_every_grad_sample_mode_trains_the_cnn(mode: str) -> None:
    x, y = _data(24)
    model = build_model(
        "cnn", {"channels": [4, 8], "hidden": 16}, input_shape=(1, 28, 28), num_classes=10, seed=0
    )
    before = model_vector(model)
    res = train_dpsgd(
        model,
        x,
        y,
        LocalTrainConfig(epochs=1, batch_size=8, lr=0.1),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=1e-5,
        generator=_g(0),
        noise_generator=_g(1),
        grad_sample_mode=mode,
        accountant="rdp",
    )
    after = model_vector(model)
    assert res.stats.steps == 3 and bool(torch.isfinite(after).all()) and not torch.equal(before, after)
    assert not any(k.startswith("_module") for k in model.state_dict())  # weights written back unwrapped


def _ctx(state: dict, rnd: int = 1) -> ClientContext:
    model = build_model("mlp", {"hidden": []}, input_shape=(1, 28, 28), num_classes=10, seed=0)
    return ClientContext(
        partition_id=0,
        server_round=rnd,
        seed=0,
        num_examples=64,
        global_vector=model_vector(model),
        layout=layout_of(model),
        train=LocalTrainConfig(epochs=1, batch_size=16, lr=0.1),
        num_clients=4,
        expected_clients_per_round=2.0,
        state=state,
    )


def test_dpsgd_f_preprocessing_cost_is_composed_once() -> None:
    x, y = _data()
    cfg = RecordDPConfig(
        noise_multiplier=1.1,
        feature_preprocessing="dpsgd_f",
        accountant="rdp",
        preprocessing_noise_multiplier=3.0,
        feature_clip_norm=20.0,
    )
    mech = RecordLevelDP(cfg, delta=1e-5, rounds=3)
    state: dict = {}
    model = build_model("mlp", {"hidden": []}, input_shape=(1, 28, 28), num_classes=10, seed=0)
    _, m1 = mech.client_train(model, x, y, _ctx(state), {}, None)
    ref = RDPAccountant()
    ref.history = [(3.0, 1.0, 1), (3.0, 1.0, 1), (1.1, 0.25, 4)]
    assert m1["epsilon"] == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    plain = RDPAccountant()
    plain.history = [(1.1, 0.25, 4)]
    assert m1["epsilon"] > plain.get_epsilon(1e-5)
    _, m2 = mech.client_train(model, x, y, _ctx(state, 2), {}, None)  # the transform is reused, not re-paid
    ref.history = [*ref.history, (1.1, 0.25, 4)]
    assert m2["epsilon"] == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    assert np.asarray(state[HISTORY_KEY]).shape == (4, 3)


def test_dpsgd_f_weight_mapping_is_exact_on_unclipped_points() -> None:
    x, _ = _data(32)
    t, rows = private_feature_transform(x, bound=50.0, noise_multiplier=0.5, quantile=1.0, generator=_g(0))
    assert rows == [(0.5, 1.0, 1), (0.5, 1.0, 1)]
    model = build_model("mlp", {"hidden": [8]}, input_shape=(1, 28, 28), num_classes=10, seed=0)
    raw = model(x)
    to_transformed_space(model, t)
    xt = (x.reshape(32, -1).double() - t.mean) / t.radius
    inside = xt.norm(dim=1) <= 1.0
    assert inside.any()
    assert torch.allclose(model(t.apply(x))[inside], raw[inside], atol=1e-4)
    to_raw_space(model, t)
    assert torch.allclose(model(x), raw, atol=1e-4)


def test_input_perturbation_epsilon_is_one_gaussian_release() -> None:
    lib = PLDAccountant()
    lib.compose(E.GaussianDpEvent(2.0))
    assert input_perturbation_epsilon(2.0, 1e-5) == pytest.approx(lib.get_epsilon(1e-5), rel=1e-9)
    x, y = _data()
    mech = RecordLevelDP(
        RecordDPConfig(mechanism="input", noise_multiplier=2.0, feature_clip_norm=5.0), delta=1e-5, rounds=3
    )
    state: dict = {}
    model = build_model("mlp", {"hidden": []}, input_shape=(1, 28, 28), num_classes=10, seed=0)
    _, m1 = mech.client_train(model, x, y, _ctx(state, 1), {}, None)
    _, m2 = mech.client_train(model, x, y, _ctx(state, 2), {}, None)
    assert m1["epsilon"] == m2["epsilon"] == input_perturbation_epsilon(2.0, 1e-5)  # one release, no growth


def test_record_level_stop_uses_next_participation() -> None:
    x, y = _data()
    mech = RecordLevelDP(
        RecordDPConfig(noise_multiplier=1.0, accountant="rdp"), delta=1e-5, rounds=10, target_epsilon=5.0
    )
    state: dict = {}
    model = build_model("mlp", {"hidden": []}, input_shape=(1, 28, 28), num_classes=10, seed=0)
    rnd = 0
    while not mech.budget_exhausted():
        rnd += 1
        _, met = mech.client_train(model, x, y, _ctx(state, rnd), {}, None)
        rep = mech.round_report(rnd, [met])
        assert rep["epsilon"] <= 5.0
        assert rnd < 50
    assert met["epsilon-next"] > 5.0
    assert met["epsilon-next"] == pytest.approx(
        opacus_epsilon([(1.0, 0.25, 4 * (rnd + 1))], accountant="rdp", delta=1e-5), rel=1e-9
    )
