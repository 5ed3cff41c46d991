"""Each attack family acting inside real local training (no federation): a narrow version of the
small CNN is pre-trained on clean mnist5k, then one attacker trains from it with the attack's
poison, hooks and transform, and we measure backdoor accuracy (BA) and clean accuracy (MA) on the
held-out split. This checks that the hooks act inside ``train_local``, not just in isolation."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import attacks  # noqa: F401  (registers every plug-in)
from attacks.backdoor.edge_case import EdgeCase
from attacks.base import CLIENT_ATTACKS, ClientAttack
from simulator.context import ClientContext
from simulator.data.base import DATASETS
from simulator.data.federated import stratified_split
from simulator.flat import layout_of, load_vector, model_vector
from simulator.models import build_model
from simulator.training import LocalTrainConfig, evaluate, train_local

# narrower than the default cnn ([32, 64], 128) so each test stays well under 10 s on one CPU thread
CNN = {"channels": [8, 16], "hidden": 64}
LOCAL = LocalTrainConfig(epochs=5, batch_size=32, lr=0.05, momentum=0.9)  # 5 × 20 = 100 steps on 640 examples


@dataclass
class World:
    train: object
    test_x: torch.Tensor
    test_y: torch.Tensor
    pretrained: torch.nn.Module
    attacker_idx: np.ndarray
    edge: EdgeCase


@pytest.fixture(scope="module")
def world() -> World:
    torch.manual_seed(0)
    full = DATASETS.create("mnist5k")
    tr, te = stratified_split(full.y.numpy(), 0.2, 0)
    train, test = full.subset(tr), full.subset(te)
    edge = EdgeCase(source_class=7, target_label=1, edge_size=60, clean_ratio=None)
    reserved = edge.reserve(train)  # kept out of every benign client, as the data builder does
    pool = np.setdiff1d(np.arange(len(train)), reserved)
    perm = np.random.default_rng(0).permutation(pool)
    benign, attacker = perm[:2400], perm[2400:3040]
    model = build_model("cnn", CNN, input_shape=(1, 28, 28), num_classes=10, seed=0)
    train_local(
        model,
        train.x[benign],
        train.y[benign],
        LocalTrainConfig(epochs=1, batch_size=32, lr=0.05, momentum=0.9),
        generator=torch.Generator().manual_seed(0),
    )
    return World(train, test.x, test.y, model, attacker, edge)


def _ctx(model: torch.nn.Module, *, pid: int = 0, colluders: tuple[int, ...] = ()) -> ClientContext:
    layout = layout_of(model)
    return ClientContext(
        partition_id=pid,
        server_round=2,
        seed=0,
        num_examples=640,
        global_vector=model_vector(model, layout),
        layout=layout,
        train=LOCAL,
        num_clients=20,
        expected_clients_per_round=10.0,
        malicious=True,
        colluders=colluders,
    )


def _attack_round(
    world: World, atk: ClientAttack, *, pid: int = 0, colluders: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor, ClientContext]:
    """One attacker round from the pre-trained model: (Δ after training, transformed Δ, ctx)."""
    model = copy.deepcopy(world.pretrained)
    ctx = _ctx(model, pid=pid, colluders=colluders)
    x, y = world.train.x[world.attacker_idx], world.train.y[world.attacker_idx]
    xp, yp = atk.poison(x, y, ctx)
    train_local(model, xp, yp, LOCAL, generator=ctx.generator("train"), hooks=atk.hooks(ctx))
    delta = model_vector(model, ctx.layout) - ctx.global_vector
    return delta, atk.transform(delta.clone(), ctx), ctx


def _accuracies(
    world: World, atk: ClientAttack, ctx: ClientContext, update: torch.Tensor
) -> tuple[float, float]:
    """(MA, BA) of the model w_global + update."""
    model = copy.deepcopy(world.pretrained)
    load_vector(model, ctx.global_vector + update, ctx.layout)
    ma, _ = evaluate(model, world.test_x, world.test_y)
    xb, yb = atk.backdoor_testset(world.test_x, world.test_y)
    ba, _ = evaluate(model, xb, yb)
    return ma, ba


def _baseline(world: World, atk: ClientAttack) -> tuple[float, float]:
    ctx = _ctx(world.pretrained)
    return _accuracies(world, atk, ctx, torch.zeros(ctx.layout.dim))


def test_badnets_training_implants_the_trigger(world):
    atk = CLIENT_ATTACKS.create("badnets", {})
    ma0, ba0 = _baseline(world, atk)
    _, update, ctx = _attack_round(world, atk)
    ma, ba = _accuracies(world, atk, ctx, update)
    print(f"badnets: before MA {ma0:.3f} BA {ba0:.3f}; after MA {ma:.3f} BA {ba:.3f}")
    assert ma0 > 0.8 and ba0 < 0.2
    assert ba > 0.9 and ma > 0.8


def test_dba_local_stripes_combine_into_the_full_trigger(world):
    atk = CLIENT_ATTACKS.create("dba", {})
    colluders = (0, 1, 2, 3)
    updates = [_attack_round(world, atk, pid=p, colluders=colluders)[1] for p in colluders]
    ctx = _ctx(world.pretrained)
    ma, ba_full = _accuracies(world, atk, ctx, torch.stack(updates).mean(0))  # the 4 attackers, averaged
    model = copy.deepcopy(world.pretrained)
    load_vector(model, ctx.global_vector + torch.stack(updates).mean(0), ctx.layout)
    keep = world.test_y != atk.target_label
    ba_part, _ = evaluate(
        model, atk.parts[0].apply(world.test_x[keep]), torch.full((int(keep.sum()),), atk.target_label)
    )
    _, ba0 = _baseline(world, atk)
    print(
        f"dba: before BA {ba0:.3f}; averaged attackers MA {ma:.3f} BA(full) {ba_full:.3f} "
        f"BA(one stripe) {ba_part:.3f}"
    )
    assert ba0 < 0.2 and ba_full > 0.8 and ma > 0.8
    assert ba_full > ba_part  # the global trigger is stronger than any single local one


def test_model_replacement_survives_averaging_only_when_scaled(world):
    atk = CLIENT_ATTACKS.create("model_replacement", {"server_lr": 1.0})
    delta, scaled, ctx = _attack_round(world, atk)
    n = ctx.expected_clients_per_round  # FedAvg; benign updates cancel (paper's setting)
    ma_s, ba_s = _accuracies(world, atk, ctx, scaled / n)
    ma_u, ba_u = _accuracies(world, atk, ctx, delta / n)
    print(f"model replacement: scaled MA {ma_s:.3f} BA {ba_s:.3f}; unscaled MA {ma_u:.3f} BA {ba_u:.3f}")
    assert torch.allclose(scaled, 10.0 * delta)
    assert ba_s > 0.9 and ma_s > 0.8
    assert ba_u < ba_s - 0.3


def test_constrain_and_scale_keeps_the_update_closer_to_the_global_model(world):
    plain, _, _ = _attack_round(world, CLIENT_ATTACKS.create("model_replacement", {}))
    atk = CLIENT_ATTACKS.create("constrain_and_scale", {"alpha": 0.5})
    delta, scaled, ctx = _attack_round(world, atk)
    ma, ba = _accuracies(world, atk, ctx, scaled / ctx.expected_clients_per_round)
    print(
        f"constrain-and-scale: |Δ| {float(delta.norm()):.3f} vs plain {float(plain.norm()):.3f}; "
        f"MA {ma:.3f} BA {ba:.3f}"
    )
    assert float(delta.norm()) < 0.5 * float(plain.norm())  # the anomaly term acted in training
    assert ba > 0.8 and ma > 0.8


def test_edge_case_training_flips_the_tail_sevens(world):
    atk = world.edge
    ma0, ba0 = _baseline(world, atk)
    _, update, ctx = _attack_round(world, atk)
    ma, ba = _accuracies(world, atk, ctx, update)
    n_bd = atk.backdoor_testset(world.test_x, world.test_y)[0].shape[0]
    print(
        f"edge case: {n_bd} tail 7s in test; before MA {ma0:.3f} BA {ba0:.3f}; after MA {ma:.3f} BA {ba:.3f}"
    )
    assert n_bd >= 10 and ba0 < 0.3
    assert ba > 0.6 and ma > 0.8


def test_pgd_training_stays_in_the_ball_and_still_implants(world):
    free, _, _ = _attack_round(world, CLIENT_ATTACKS.create("badnets", {}))
    eps = 0.5 * float(free.norm())
    atk = CLIENT_ATTACKS.create("pgd", {"base": "badnets", "eps": eps, "project_every": 1})
    delta, update, ctx = _attack_round(world, atk)
    ma, ba = _accuracies(world, atk, ctx, update)
    print(
        f"pgd: free |Δ| {float(free.norm()):.3f}, eps {eps:.3f}, trained |Δ| {float(delta.norm()):.3f}; "
        f"MA {ma:.3f} BA {ba:.3f}"
    )
    assert float(delta.norm()) <= eps + 1e-5  # the after_step projection acted during training
    assert float(update.norm()) <= eps + 1e-5
    assert ba > 0.7 and ma > 0.8


def test_neurotoxin_trains_only_the_unmasked_coordinates(world):
    atk = CLIENT_ATTACKS.create("neurotoxin", {"mask_ratio": 0.9})
    model = copy.deepcopy(world.pretrained)
    ctx = _ctx(model)
    x, y = world.train.x[world.attacker_idx], world.train.y[world.attacker_idx]
    xp, yp = atk.poison(x, y, ctx)
    hooks = atk.hooks(ctx)
    train_local(model, xp, yp, LOCAL, generator=ctx.generator("train"), hooks=hooks)
    delta = model_vector(model, ctx.layout) - ctx.global_vector
    kept = torch.cat([m.reshape(-1) for _, m in hooks.masks]).bool()  # layout order = parameter order (cnn)
    ma, ba = _accuracies(world, atk, ctx, atk.transform(delta, ctx))
    moved = delta != 0
    print(
        f"neurotoxin: kept {int(kept.sum())}/{kept.numel()}, "
        f"moved outside mask {int((moved & ~kept).sum())}; "
        f"MA {ma:.3f} BA {ba:.3f}"
    )
    assert int(kept.sum()) == int(kept.numel() * 0.9)
    assert not torch.any(moved & ~kept)  # the top-10% benign coordinates never moved
    assert ba > 0.8 and ma > 0.8
