"""FLTrust (Cao et al., NDSS 2021): the aggregate against a per-client loop, the trust score of a sign-flipped
attacker, scale invariance, the root-update capability (the round core fills ``ctx.root_update``, the rule
refuses to run without it), the server's root set (seeded, out of the evaluator's test set) and a tiny
federated run."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

import defenses  # noqa: F401  (registers every aggregator)
from defenses.aggregation.fltrust import FLTrust, fltrust_trust_scores
from defenses.base import AGGREGATORS
from simulator import load_scenario
from simulator.context import RoundContext, make_generator
from simulator.flat import Layout, layout_of, load_vector, model_vector
from simulator.flower.runtime import build_runtime
from simulator.flower.server_app import root_split
from simulator.flower.strategy import RootTrainer
from simulator.models import build_model
from simulator.round import ServerPlugins, ValidReply, server_step
from simulator.runner import run
from simulator.training import LocalTrainConfig, train_local


def _ctx(n: int, d: int, root: torch.Tensor | None) -> RoundContext:
    return RoundContext(
        server_round=2,
        seed=1,
        global_vector=torch.zeros(d),
        layout=Layout(("w",), ((d,),)),
        client_ids=tuple(3 * i + 1 for i in range(n)),
        num_examples=tuple(10 + i for i in range(n)),
        num_clients=100,
        expected_clients_per_round=float(n),
        root_update=root,
    )


def _benign(n: int = 8, d: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` updates scattered around a common direction, and a root update along it."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(d, generator=g)
    updates = direction + 0.8 * torch.randn(n, d, generator=g) * direction.norm() / math.sqrt(d)
    return updates * torch.rand(n, 1, generator=g).add(0.5), 0.7 * direction


def _brute_force(updates: torch.Tensor, root: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    n0 = float(root.double().norm())
    total, acc, trust = 0.0, torch.zeros(updates.shape[1], dtype=torch.float64), []
    for g in updates.double():
        cos = float(g @ root.double()) / (float(g.norm()) * n0)
        ts = max(0.0, cos)
        trust.append(ts)
        acc += ts * g * (n0 / float(g.norm()))
        total += ts
    return (acc / total).float(), trust


def test_registered_with_the_root_update_capability() -> None:
    agg = AGGREGATORS.create("fltrust")
    assert isinstance(agg, FLTrust) and agg.needs_root_update and agg.root_size == 100
    assert AGGREGATORS.create("fltrust", {"root_size": 20}).root_size == 20
    assert not AGGREGATORS.create("fedavg").needs_root_update


def test_aggregate_matches_a_per_client_loop() -> None:
    g = torch.Generator().manual_seed(4)
    updates = torch.randn(9, 25, generator=g)  # some negative cosines: trust 0
    root = torch.randn(25, generator=g)
    ctx = _ctx(9, 25, root)
    res = FLTrust().aggregate(updates, torch.ones(9), ctx)
    expected, trust = _brute_force(updates, root)
    torch.testing.assert_close(res.update, expected, atol=1e-6, rtol=1e-5)
    assert 0 < sum(t > 0 for t in trust) < 9
    assert res.accepted == tuple(c for c, t in zip(ctx.client_ids, trust) if t > 0)
    assert res.scores == pytest.approx({c: 1.0 - t for c, t in zip(ctx.client_ids, trust)})
    # example counts are ignored (the paper's rule)
    torch.testing.assert_close(FLTrust().aggregate(updates, torch.arange(1.0, 10.0), ctx).update, res.update)


def test_a_sign_flipped_attacker_gets_no_trust_and_no_say() -> None:
    benign, root = _benign()
    attacker = -3.0 * benign[:1]
    ctx = _ctx(9, benign.shape[1], root)
    res = FLTrust().aggregate(torch.cat([benign, attacker]), torch.ones(9), ctx)
    ts, _ = fltrust_trust_scores(torch.cat([benign, attacker]), root)
    assert float(ts[-1]) == 0.0 and bool((ts[:-1] > 0).all())
    assert ctx.client_ids[-1] not in res.accepted and res.scores[ctx.client_ids[-1]] == 1.0
    alone = FLTrust().aggregate(benign, torch.ones(8), _ctx(8, benign.shape[1], root))
    torch.testing.assert_close(res.update, alone.update)


def test_scaling_an_update_does_not_increase_its_influence() -> None:
    benign, root = _benign(seed=1)
    g = torch.Generator().manual_seed(9)
    attacker = root + 2.0 * torch.randn(root.shape[0], generator=g)  # a positive but imperfect cosine
    ctx = _ctx(9, benign.shape[1], root)
    plain = FLTrust().aggregate(torch.cat([benign, attacker[None]]), torch.ones(9), ctx)
    boosted = FLTrust().aggregate(torch.cat([benign, 100.0 * attacker[None]]), torch.ones(9), ctx)
    torch.testing.assert_close(boosted.update, plain.update, atol=1e-5, rtol=1e-5)
    assert boosted.scores == pytest.approx(plain.scores)
    # every update enters at ‖g₀‖: the aggregate is no longer than the root update
    assert float(plain.update.norm()) <= float(root.norm()) + 1e-5


def test_no_trust_at_all_gives_the_zero_update() -> None:
    benign, root = _benign()
    res = FLTrust().aggregate(-benign, torch.ones(8), _ctx(8, benign.shape[1], root))
    assert torch.equal(res.update, torch.zeros(benign.shape[1])) and res.accepted == ()
    zero_root = FLTrust().aggregate(benign, torch.ones(8), _ctx(8, benign.shape[1], torch.zeros(30)))
    assert torch.equal(zero_root.update, torch.zeros(30))


def test_refuses_to_run_without_a_root_update() -> None:
    benign, _ = _benign()
    with pytest.raises(ValueError, match=r"needs the server's root update \(ctx.root_update\)"):
        FLTrust().aggregate(benign, torch.ones(8), _ctx(8, benign.shape[1], None))


def _valid(updates: torch.Tensor, ctx: RoundContext) -> list[ValidReply]:
    return [
        ValidReply(pid, k, {"delta": u.clone()}, {"num-examples": k, "train-loss": 0.0}, 0)
        for pid, k, u in zip(ctx.client_ids, ctx.num_examples, updates)
    ]


def test_the_server_step_fills_the_root_update_for_a_rule_that_needs_it() -> None:
    benign, root = _benign()
    ctx = _ctx(8, benign.shape[1], None)
    seen: list[RoundContext] = []

    def root_update(c: RoundContext) -> torch.Tensor:
        seen.append(c)
        return root

    plugins = ServerPlugins(aggregator=FLTrust(), root_update=root_update)
    out = server_step(_valid(benign, ctx), ctx, plugins, server_lr=1.0)
    assert len(seen) == 1 and seen[0].server_round == ctx.server_round
    direct = FLTrust().aggregate(benign, torch.ones(8), dataclasses.replace(ctx, root_update=root))
    assert out.new_global is not None
    torch.testing.assert_close(out.new_global, ctx.global_vector + direct.update)
    with pytest.raises(ValueError, match="needs the server's root update"):
        server_step(_valid(benign, ctx), ctx, ServerPlugins(aggregator=FLTrust()), server_lr=1.0)
    # a rule that does not need it is never given one (and the function is not called)
    server_step(_valid(benign, ctx), ctx, ServerPlugins(root_update=root_update), server_lr=1.0)
    assert len(seen) == 1


def test_the_root_trainer_runs_the_clients_recipe_seeded_per_round() -> None:
    model = build_model("mlp", {"hidden": [8]}, input_shape=(1, 8, 8), num_classes=3, seed=0)
    layout = layout_of(model)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8, generator=g), torch.arange(40) % 3
    cfg = LocalTrainConfig(epochs=1, batch_size=8, lr=0.1)
    trainer = RootTrainer(model, x, y, cfg, seed=5, layout=layout)
    gvec = model_vector(model, layout) + 0.01
    ctx = dataclasses.replace(_ctx(1, gvec.numel(), None), global_vector=gvec, layout=layout, server_round=3)
    a, b = trainer(ctx), trainer(ctx)
    torch.testing.assert_close(a, b)  # the same round: the same update (the trainer reloads w_global)
    ref = copy.deepcopy(model)
    load_vector(ref, gvec, layout)
    train_local(ref, x, y, cfg, generator=make_generator(5, 3, "fltrust-root"))
    torch.testing.assert_close(a, model_vector(ref, layout) - gvec)
    assert not torch.equal(trainer(dataclasses.replace(ctx, server_round=4)), a)  # per-round randomness
    fresh = build_model("mlp", {"hidden": [8]}, input_shape=(1, 8, 8), num_classes=3, seed=0)
    assert torch.equal(model_vector(model, layout), model_vector(fresh, layout))  # trains a private copy


def test_the_root_set_is_a_seeded_draw_kept_out_of_the_test_set() -> None:
    root, rest = root_split(500, 100, seed=0)
    assert len(root) == 100 and len(rest) == 400 and not set(root) & set(rest)
    assert sorted(set(root) | set(rest)) == list(range(500))
    again, _ = root_split(500, 100, seed=0)
    other, _ = root_split(500, 100, seed=1)
    assert list(again) == list(root) and list(other) != list(root)
    with pytest.raises(ValueError, match="needs a test split larger"):
        root_split(50, 50, seed=0)


TINY = [
    "simulation.engine='inline'",
    "data.max_examples=800",
    "data.num_clients=4",
    "federation.clients_per_round=3",
    "federation.rounds=2",
    "federation.local_epochs=1",
    "model.name='mlp'",
    "model.params={hidden=[16]}",
    "defenses.aggregator={name='fltrust', params={root_size=40}}",
]


def test_a_tiny_federated_run_with_fltrust_completes() -> None:
    s = load_scenario("scenarios/quickstart.toml", TINY)
    r = run(s, write=False)
    assert r.status == "completed" and len(r.rounds) == 2
    assert all(rr.clients_aggregated >= 1 and rr.main_accuracy is not None for rr in r.rounds)
    assert all(set(rr.scores) == set(rr.sampled) for rr in r.rounds)
    assert r.defense is not None and r.defense["aggregator"] == "fltrust"
    test_size = len(build_runtime(s).data.test)
    assert r.defense["root_examples"] == 40 and r.defense["test_examples"] == test_size - 40
