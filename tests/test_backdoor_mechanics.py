"""Backdoor attacks, one mechanism at a time: triggers, poison ratio, test sets, scaling, projection,
DBA split, Neurotoxin mask, edge-case selection. No federated training here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attacks  # noqa: F401  (registers every plug-in)
from attacks.backdoor.badnets import BadNets
from attacks.backdoor.compose import ChainedHooks, project_l2
from attacks.backdoor.dba import DBA
from attacks.backdoor.edge_case import EdgeCase
from attacks.backdoor.model_replacement import ModelReplacement
from attacks.backdoor.neurotoxin import GradientMask, Neurotoxin, bottom_k_mask
from attacks.backdoor.pgd import PGD, L2Projection
from attacks.backdoor.triggers import pattern_trigger, poison_with_trigger
from attacks.base import CLIENT_ATTACKS
from simulator.context import ClientContext
from simulator.data.base import ArrayDataset
from simulator.flat import layout_of, load_vector, model_vector
from simulator.models import build_model
from simulator.registry import BadParams
from simulator.training import LocalTrainConfig, train_local


def make_ctx(
    model: torch.nn.Module | None = None,
    *,
    pid: int = 0,
    rnd: int = 1,
    colluders: tuple[int, ...] = (),
    expected: float = 10.0,
) -> ClientContext:
    model = model or torch.nn.Linear(4, 3)
    layout = layout_of(model)
    return ClientContext(
        partition_id=pid,
        server_round=rnd,
        seed=0,
        num_examples=10,
        global_vector=model_vector(model, layout),
        layout=layout,
        train=LocalTrainConfig(batch_size=16, lr=0.05),
        num_clients=20,
        expected_clients_per_round=expected,
        malicious=True,
        colluders=colluders,
    )


def images(n: int = 64, c: int = 1, hw: int = 28, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, hw, hw, generator=g) * 0.5  # never 1.0, so stamped pixels are recognisable
    y = torch.arange(n) % 10
    return x, y


# ---------------------------------------------------------------- triggers (BadNets) ----------


@pytest.mark.parametrize("corner", ["top_left", "top_right", "bottom_left", "bottom_right"])
def test_square_trigger_sets_exactly_its_pixels_at_the_corner(corner):
    x, _ = images(4, c=3)
    atk = BadNets(size=3, margin=2, corner=corner, value=1.0)
    t = atk.trigger(28, 28)
    out = t.apply(x)
    rows = range(2, 5) if corner.startswith("top") else range(23, 26)
    cols = range(2, 5) if corner.endswith("left") else range(23, 26)
    expected = torch.zeros(28, 28, dtype=torch.bool)
    for r in rows:
        for c in cols:
            expected[r, c] = True
    assert torch.equal(t.mask(28, 28), expected)
    assert torch.all(out[:, :, expected] == 1.0)
    assert torch.equal(out[:, :, ~expected], x[:, :, ~expected])  # nothing else changed
    assert torch.equal(x, images(4, c=3)[0])  # input untouched


def test_plus_and_l_patterns_have_the_stated_pixels():
    plus = pattern_trigger(
        shape="plus", size=5, corner="bottom_right", margin=0, value=0.7, height=28, width=28
    )
    assert set(plus.pixels) == {(25, c) for c in range(23, 28)} | {(r, 25) for r in range(23, 28)}
    ell = pattern_trigger(shape="L", size=3, corner="top_left", margin=1, value=1.0, height=28, width=28)
    assert set(ell.pixels) == {(1, 1), (2, 1), (3, 1), (3, 2), (3, 3)}
    out = plus.apply(torch.zeros(1, 1, 28, 28))
    assert torch.allclose(out[0, 0, 25, 23:], torch.full((5,), 0.7))
    assert out.sum().item() == pytest.approx(0.7 * 9)


def test_trigger_that_does_not_fit_is_rejected():
    with pytest.raises(ValueError, match="does not fit"):
        pattern_trigger(shape="square", size=8, corner="top_left", margin=1, value=1.0, height=8, width=8)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3125, 0.5, 1.0])
def test_replace_mode_poisons_exactly_the_ratio(ratio):
    x, y = images(200)
    t = pattern_trigger(
        shape="square", size=3, corner="bottom_right", margin=1, value=1.0, height=28, width=28
    )
    xo, yo, flag = poison_with_trigger(
        x,
        y,
        trigger=t,
        target_label=2,
        ratio=ratio,
        mode="replace",
        generator=torch.Generator().manual_seed(1),
    )
    m = t.mask(28, 28)
    stamped = (xo[:, 0, m] == 1.0).all(1)
    assert xo.shape == x.shape and yo.shape == y.shape
    assert int(stamped.sum()) == round(ratio * 200) == int(flag.sum())
    assert torch.equal(stamped, flag) and torch.all(yo[flag] == 2)
    assert torch.equal(xo[~flag], x[~flag]) and torch.equal(yo[~flag], y[~flag])


@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_add_mode_keeps_clean_data_and_poisoned_share_equals_ratio(ratio):
    x, y = images(120)
    atk = BadNets(poison_ratio=ratio, mode="add", target_label=3)
    xo, yo = atk.poison(x, y, make_ctx())
    n_bad = xo.shape[0] - 120
    assert torch.equal(xo[:120], x) and torch.equal(yo[:120], y)
    assert n_bad / xo.shape[0] == pytest.approx(ratio, abs=0.005)
    assert torch.all(yo[120:] == 3) and torch.all(xo[120:, 0, atk.trigger(28, 28).mask(28, 28)] == 1.0)


def test_poison_is_seeded_by_client_and_round():
    x, y = images(100)
    atk = BadNets()
    a, b = atk.poison(x, y, make_ctx(pid=1, rnd=3)), atk.poison(x, y, make_ctx(pid=1, rnd=3))
    c = atk.poison(x, y, make_ctx(pid=1, rnd=4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_backdoor_testset_excludes_the_target_class_and_is_fully_triggered():
    x, y = images(100)
    atk = BadNets(target_label=4)
    xb, yb = atk.backdoor_testset(x, y)
    assert xb.shape[0] == int((y != 4).sum()) == 90
    assert torch.all(yb == 4)
    m = atk.trigger(28, 28).mask(28, 28)
    assert torch.all(xb[:, 0, m] == 1.0)
    assert torch.equal(xb[:, :, ~m], x[y != 4][:, :, ~m])


def test_bad_badnets_params_fail_validation():
    with pytest.raises(BadParams, match="poison_ratio"):
        CLIENT_ATTACKS.validate("badnets", {"poison_ratio": 1.5})
    with pytest.raises(BadParams, match="shape"):
        CLIENT_ATTACKS.validate("badnets", {"shape": "star"})


# ---------------------------------------------------------------- DBA ----------------------------


def test_dba_parts_are_disjoint_and_their_union_is_the_full_trigger():
    atk = DBA()
    masks = [p.mask(28, 28) for p in atk.parts]
    assert len(masks) == 4 and all(int(m.sum()) == 4 for m in masks)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.any(masks[i] & masks[j])
    assert torch.equal(torch.stack(masks).any(0), atk.full.mask(28, 28))
    # the official MNIST layout: rows {0, 3} × columns {0–3, 6–9}
    assert set(atk.full.pixels) == {(r, c) for r in (0, 3) for c in [*range(0, 4), *range(6, 10)]}


def test_dba_attacker_uses_its_rank_among_colluders_and_tests_with_the_full_trigger():
    atk = DBA(poison_ratio=1.0)
    x, y = images(10)
    colluders = (3, 8, 11, 15)
    for rank, pid in enumerate(colluders):
        xo, _ = atk.poison(x, y, make_ctx(pid=pid, colluders=colluders))
        stamped = xo[0, 0] == 1.0
        assert torch.equal(stamped, atk.parts[rank].mask(28, 28))
    assert atk.part_index(make_ctx(pid=6, colluders=(6,))) == 6 % 4  # not colluding: partition id
    xb, yb = atk.backdoor_testset(x, y)
    assert torch.all(xb[:, 0, atk.full.mask(28, 28)] == 1.0) and torch.all(yb == 2)


# ---------------------------------------------------------------- model replacement --------------


def test_model_replacement_scale_is_n_over_eta_and_the_override_wins():
    ctx = make_ctx(expected=10.0)
    assert ModelReplacement().scale_factor(ctx) == pytest.approx(10.0)
    assert ModelReplacement(server_lr=0.1).scale_factor(ctx) == pytest.approx(100.0)  # DBA single-shot
    assert ModelReplacement(gamma=7.5, server_lr=0.1).scale_factor(ctx) == pytest.approx(7.5)
    assert ModelReplacement(server_lr=2.0).scale_factor(make_ctx(expected=6.0)) == pytest.approx(3.0)


@given(gamma=st.floats(0.5, 200.0), seed=st.integers(0, 1000))
@settings(max_examples=25, deadline=None)
def test_model_replacement_transform_scales_the_update_exactly(gamma, seed):
    ctx = make_ctx()
    d = torch.randn(ctx.layout.dim, generator=torch.Generator().manual_seed(seed))
    out = ModelReplacement(gamma=gamma).transform(d, ctx)
    assert out.shape == d.shape
    assert torch.allclose(out, gamma * d)
    assert float(out.norm()) == pytest.approx(gamma * float(d.norm()), rel=1e-5)


def test_constrain_and_scale_adds_alpha_times_distance_to_the_loss():
    model = torch.nn.Linear(4, 3)
    ctx = make_ctx(model)
    atk = CLIENT_ATTACKS.create("constrain_and_scale", {"alpha": 0.5})
    assert atk.alpha == 0.5 and CLIENT_ATTACKS.create("model_replacement", {}).hooks(ctx) is None
    hooks = atk.hooks(ctx)
    x, y = torch.randn(2, 4), torch.tensor([0, 1])
    assert float(hooks.extra_loss(model, x, y).detach()) == pytest.approx(0.0)
    with torch.no_grad():
        shift = torch.zeros(ctx.layout.dim)
        shift[:5] = torch.tensor([3.0, 0.0, 4.0, 0.0, 0.0])
        load_vector(model, ctx.global_vector + shift, ctx.layout)
    loss = hooks.extra_loss(model, x, y)
    assert float(loss.detach()) == pytest.approx(0.5 * 5.0)
    loss.backward()  # the term is differentiable and pulls towards the global model
    assert model.weight.grad.reshape(-1)[0] == pytest.approx(0.5 * 3.0 / 5.0)


def test_composed_attack_delegates_data_hooks_to_its_base():
    atk = CLIENT_ATTACKS.create("model_replacement", {"base": {"name": "dba", "params": {"target_label": 5}}})
    assert isinstance(atk.base, DBA) and atk.target_label == 5
    x, y = images(40)
    ctx = make_ctx(pid=2)
    assert all(torch.equal(a, b) for a, b in zip(atk.poison(x, y, ctx), atk.base.poison(x, y, ctx)))
    with pytest.raises(BadParams, match="did you mean 'badnets'"):
        CLIENT_ATTACKS.validate("pgd", {"base": "badnet"})


# ---------------------------------------------------------------- PGD ----------------------------


@given(eps=st.floats(0.05, 5.0), scale=st.floats(0.0, 3.0), seed=st.integers(0, 1000))
@settings(max_examples=30, deadline=None)
def test_pgd_after_step_projects_into_the_ball_and_leaves_inside_points_alone(eps, scale, seed):
    model = torch.nn.Linear(6, 4)
    ctx = make_ctx(model)
    hook = L2Projection(eps=eps, every=1, ctx=ctx)
    d = torch.randn(ctx.layout.dim, generator=torch.Generator().manual_seed(seed))
    d = d / d.norm() * eps * scale
    load_vector(model, ctx.global_vector + d, ctx.layout)
    before = model_vector(model, ctx.layout)
    hook.after_step(model, 0)
    after = model_vector(model, ctx.layout)
    dist = float((after - ctx.global_vector).norm())
    assert dist <= eps + 1e-6
    if float(d.norm()) <= eps:
        assert torch.equal(after, before)
    else:
        assert dist == pytest.approx(eps, rel=1e-5)
        assert torch.allclose((after - ctx.global_vector) / dist, d / d.norm(), atol=1e-5)  # same direction


def test_pgd_projects_only_every_k_steps_and_transform_projects_at_the_end():
    model = torch.nn.Linear(6, 4)
    ctx = make_ctx(model)
    atk = PGD(base="badnets", eps=0.5, project_every=3)
    hooks = atk.hooks(ctx)
    far = ctx.global_vector + torch.ones(ctx.layout.dim)
    load_vector(model, far, ctx.layout)
    hooks.after_step(model, 1)  # not a projection step
    assert torch.equal(model_vector(model, ctx.layout), far)
    hooks.after_step(model, 3)
    assert float((model_vector(model, ctx.layout) - ctx.global_vector).norm()) <= 0.5 + 1e-6
    out = atk.transform(torch.full((ctx.layout.dim,), 2.0), ctx)
    assert float(out.norm()) == pytest.approx(0.5, rel=1e-6)
    small = torch.full((ctx.layout.dim,), 1e-3)
    assert torch.equal(atk.transform(small, ctx), small)


def test_adaptive_pgd_radius_is_the_clip_bound_divided_by_the_base_scale():
    ctx = make_ctx(expected=10.0)
    assert PGD(base="badnets", adaptive_clip_bound=3.0).radius(ctx) == pytest.approx(3.0)
    atk = CLIENT_ATTACKS.create(
        "pgd", {"base": {"name": "model_replacement", "params": {"gamma": 4.0}}, "adaptive_clip_bound": 2.0}
    )
    assert atk.radius(ctx) == pytest.approx(0.5)
    out = atk.transform(torch.randn(ctx.layout.dim) * 10, ctx)  # projected to 0.5, then scaled by 4
    assert float(out.norm()) == pytest.approx(2.0, rel=1e-5)


def test_project_l2_matches_the_closed_form():
    d = torch.tensor([6.0, 8.0])
    assert torch.allclose(project_l2(d, 5.0), torch.tensor([3.0, 4.0]))
    assert torch.equal(project_l2(d, 10.0), d)


# ---------------------------------------------------------------- Neurotoxin ---------------------


@given(n=st.integers(20, 400), ratio=st.floats(0.5, 1.0), seed=st.integers(0, 1000))
@settings(max_examples=40, deadline=None)
def test_bottom_k_mask_keeps_exactly_the_fraction_of_smallest_magnitudes(n, ratio, seed):
    g = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    m = bottom_k_mask(g, ratio)
    assert int(m.sum()) == int(n * ratio)
    if 0 < int(m.sum()) < n:
        assert float(g[m].abs().max()) <= float(g[~m].abs().min())
    brute = torch.zeros(n, dtype=torch.bool)
    brute[torch.argsort(g.abs(), stable=True)[: int(n * ratio)]] = True
    assert torch.equal(m, brute)  # random floats: no ties, so the set is unique


def test_bottom_k_mask_ranks_by_magnitude_not_sign():
    g = torch.tensor([-5.0, -4.0, 0.1, 0.2, 3.0, -0.3, 6.0, 0.05, -0.01, 1.0])
    assert torch.equal(bottom_k_mask(g, 0.5), g.abs() <= 0.3)


def test_neurotoxin_mask_is_global_over_layers_and_comes_from_the_clean_gradient():
    model = build_model(
        "cnn", {"channels": [4, 8], "hidden": 16}, input_shape=(1, 28, 28), num_classes=10, seed=0
    )
    ctx = make_ctx(model)
    x, y = images(48)
    atk = Neurotoxin(mask_ratio=0.9)
    atk.poison(x, y, ctx)
    hooks = atk.hooks(ctx)
    gm = hooks.hooks[-1] if isinstance(hooks, ChainedHooks) else hooks
    assert isinstance(gm, GradientMask)
    pairs = gm.compute(model)
    kept = torch.cat([m.reshape(-1) for _, m in pairs])
    d = sum(p.numel() for p in model.parameters())
    assert int(kept.sum()) == int(d * 0.9)
    # brute force: the clean-data gradient summed over batches of 16, ranked over all layers by |g|
    model.zero_grad()
    for s in range(0, 48, 16):
        torch.nn.functional.cross_entropy(model(x[s : s + 16]), y[s : s + 16]).backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).abs()
    assert float(g[kept.bool()].max()) <= float(g[~kept.bool()].min()) + 1e-12
    # applied before the step: the gradient survives only on kept coordinates
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    full = torch.cat([p.grad.reshape(-1).clone() for p in model.parameters()])
    gm.before_step(model, 0)
    masked = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.equal(masked, full * kept)


def test_neurotoxin_global_update_direction_uses_the_previous_global_model():
    torch.manual_seed(0)  # the init must not depend on which tests ran before
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 5))
    ctx1 = make_ctx(model, rnd=1)
    atk = Neurotoxin(mask_ratio=0.5, direction="global_update")
    x, y = images(8)
    y = y % 5
    atk.poison(x, y, ctx1)
    atk.hooks(ctx1)  # first time: falls back to the clean gradient, remembers w_global
    # a tie-free step (linspace's ±x pairs tie in |·|, and float rounding of (w + step) − w broke them
    # differently depending on the init)
    step = torch.randn(ctx1.layout.dim, generator=torch.Generator().manual_seed(1))
    ctx2 = ClientContext(**{**ctx1.__dict__, "server_round": 3, "global_vector": ctx1.global_vector + step})
    atk.poison(x, y, ctx2)
    gm = atk.hooks(ctx2)
    pairs = gm.compute(model)
    kept = torch.cat([m.reshape(-1) for _, m in pairs]).bool()
    # the mask ranks the global model's change w_t − w_{t−1} exactly as the server applied it
    assert torch.equal(kept, bottom_k_mask(ctx2.global_vector - ctx1.global_vector, 0.5))
    assert (kept == bottom_k_mask(step, 0.5)).float().mean() > 0.999  # and that change is the step


def test_neurotoxin_without_poison_first_fails_loudly():
    with pytest.raises(RuntimeError, match="poison"):
        Neurotoxin().hooks(make_ctx())


# ---------------------------------------------------------------- edge case ----------------------


def test_edge_case_reserve_returns_the_farthest_source_examples_like_a_brute_force_sort():
    from simulator.data.base import DATASETS

    train = DATASETS.create("mnist5k")
    atk = EdgeCase(source_class=7, edge_size=60, tail="distance")
    idx = atk.reserve(train)
    src = np.flatnonzero(train.y.numpy() == 7)
    xs = train.x.numpy()[src].reshape(len(src), -1).astype(np.float64)
    dist = np.sqrt(((xs - xs.mean(0)) ** 2).sum(1))
    brute = src[np.argsort(-dist, kind="stable")[:60]]
    assert list(idx) == list(brute)
    assert np.all(train.y.numpy()[idx] == 7)
    assert dist[np.isin(src, idx)].min() >= dist[~np.isin(src, idx)].max()


def test_edge_case_mixes_relabelled_edge_examples_with_clean_data():
    x, y = images(200, seed=1)
    pool = ArrayDataset(*images(300, seed=2), num_classes=10)
    atk = EdgeCase(edge_size=10, clean_ratio=4.0, tail="distance")
    idx = atk.reserve(pool)
    xo, yo = atk.poison(x, y, make_ctx())
    assert xo.shape == (50, 1, 28, 28) and yo.shape == (50,)
    assert torch.equal(xo[40:], pool.x[torch.as_tensor(idx)]) and torch.all(yo[40:] == 1)
    xb, yb = atk.backdoor_testset(x, y)  # same rule on the test split: tail share 10/30 of the 7s
    assert xb.shape[0] == round(10 / 30 * int((y == 7).sum())) and torch.all(yb == 1)
    sevens = x[y == 7].reshape(int((y == 7).sum()), -1)
    mean = atk._rule.mean.to(torch.float32).reshape(1, -1)
    d = (sevens - mean).norm(dim=1)
    assert torch.allclose(
        torch.sort((xb.reshape(len(xb), -1) - mean).norm(dim=1)).values, torch.sort(d).values[-len(xb) :]
    )


def test_edge_case_principal_tail_matches_the_covariance_eigenvector_brute_force():
    """The default tail: the sparse end of the first principal component, recomputed here from the
    top eigenvector of the class covariance (numpy eigh, not the SVD the attack uses)."""
    from simulator.data.base import DATASETS

    train = DATASETS.create("mnist5k")
    atk = EdgeCase(source_class=7, edge_size=60)
    idx = atk.reserve(train)
    src = np.flatnonzero(train.y.numpy() == 7)
    xs = train.x.numpy()[src].reshape(len(src), -1).astype(np.float64)
    c = xs - xs.mean(0)
    _, vecs = np.linalg.eigh(c.T @ c)
    proj = c @ vecs[:, -1]
    if (proj > 0).sum() > (proj < 0).sum():  # orient towards the side holding fewer examples
        proj = -proj
    brute = src[np.argsort(-proj, kind="stable")[:60]]
    assert set(idx.tolist()) == set(brute.tolist())
    assert proj[np.isin(src, idx)].min() >= proj[~np.isin(src, idx)].max() - 1e-9
    assert (proj > 0).sum() < len(src) / 2  # the chosen end is the sparse one
    # the test split gets the same fitted rule: its tail 7s score beyond the rest of its 7s
    test = DATASETS.create("mnist5k")
    tx, ty = test.x[2::5], test.y[2::5]  # 1,000 digits of every class, as a stand-in test split
    xb, yb = atk.backdoor_testset(tx, ty)
    sev = tx[ty == 7]
    s_all, s_b = atk._rule.scores(sev), atk._rule.scores(xb)
    assert torch.all(yb == 1) and len(xb) == round(60 / len(src) * len(sev))
    assert float(s_b.min()) >= float(torch.sort(s_all, descending=True).values[len(xb) - 1]) - 1e-9


def test_edge_case_user_file_is_split_into_train_and_heldout(tmp_path):
    arr = (np.random.default_rng(0).random((30, 28, 28, 1)) * 255).astype(np.uint8)
    path = tmp_path / "edge.npz"
    np.savez(path, x=arr, y=np.full(30, 7))
    atk = EdgeCase(edge_path=str(path), holdout_fraction=0.2, clean_ratio=None)
    assert atk.reserve(ArrayDataset(*images(20), num_classes=10)) is None
    x, y = images(20)
    xo, _ = atk.poison(x, y, make_ctx())
    xb, yb = atk.backdoor_testset(x, y)
    assert xo.shape[0] == 20 + 24 and xb.shape == (6, 1, 28, 28) and torch.all(yb == 1)
    train_rows = {tuple(r.tolist()) for r in (xo[20:] * 255).round().reshape(24, -1).to(torch.int64)}
    test_rows = {tuple(r.tolist()) for r in (xb * 255).round().reshape(6, -1).to(torch.int64)}
    assert not train_rows & test_rows and len(train_rows | test_rows) == 30


def test_edge_case_rejects_same_source_and_target():
    with pytest.raises(ValueError, match="differ"):
        EdgeCase(source_class=1, target_label=1)


# ---------------------------------------------------------------- hooks inside train_local -------


def test_chained_hooks_run_inside_train_local():
    model = torch.nn.Linear(4, 3)
    ctx = make_ctx(model)
    atk = CLIENT_ATTACKS.create(
        "pgd",
        {"base": {"name": "constrain_and_scale", "params": {"alpha": 0.1}}, "eps": 0.05, "project_every": 1},
    )
    hooks = atk.hooks(ctx)
    assert isinstance(hooks, ChainedHooks) and len(hooks.hooks) == 2
    x, y = torch.randn(64, 4), torch.arange(64) % 3
    train_local(
        model,
        x,
        y,
        LocalTrainConfig(epochs=2, batch_size=8, lr=0.5),
        generator=torch.Generator().manual_seed(0),
        hooks=hooks,
    )
    assert float((model_vector(model, ctx.layout) - ctx.global_vector).norm()) <= 0.05 + 1e-6
