"""The defense-aware backdoor (``adaptive``): on hand-made updates, the adapted rows pass each rule's test
(Krum selects one, Multi-Krum / Multi-metrics keep them, FLAME clusters them unclipped, norm clipping leaves
them unclipped) where the attackers' own rows are rejected, with the largest mix that passes; the round core's
adaptation stage replaces exactly the acting attackers' rows and never touches the server's state; scenarios
that cannot run it are refused; and in a tiny federated run the adaptive attacker is accepted more often."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import attacks  # noqa: F401  (registers the plug-ins)
import defenses  # noqa: F401
from attacks.backdoor.adaptive import AdaptiveBackdoor, adapt_updates, largest_passing_mix, mix_rows
from attacks.base import CLIENT_ATTACKS, Verdict, defense_aware
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator import load_scenario
from simulator.context import RoundContext
from simulator.flat import Layout
from simulator.round import Adapter, ServerPlugins, ValidReply, server_step
from simulator.runner import run
from simulator.scenario import ScenarioError, scenario_from_dict

MALICIOUS = (0, 1)  # partition ids (= rows) of the two acting attackers


def _round(n_b: int = 8, f: int = 2, d: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Benign updates around a common direction; attackers' updates = benign-like + a large backdoor component
    orthogonal to it (twice the common direction's norm)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=g)
    benign = common + 0.5 * torch.randn(n_b, d, generator=g)
    bd = torch.randn(d, generator=g)
    bd -= (bd @ common) / (common @ common) * common
    bd *= 2 * common.norm() / bd.norm()
    own = common + 0.5 * torch.randn(f, d, generator=g) + bd
    return benign, own


def _ctx(n: int, d: int) -> RoundContext:
    return RoundContext(
        server_round=3,
        seed=1,
        global_vector=torch.zeros(d),
        layout=Layout(("w",), ((d,),)),
        client_ids=tuple(range(n)),
        num_examples=(50,) * n,
        num_clients=40,
        expected_clients_per_round=float(n),
    )


def _valid(u: torch.Tensor) -> list[ValidReply]:
    return [
        ValidReply(i, 50, {"delta": u[i].clone()}, {"num-examples": 50, "train-loss": 0.0}, 0)
        for i in range(len(u))
    ]


class Recorder(Aggregator):
    """The server's aggregator: records what it is given and counts its calls."""

    def __init__(self, inner: Aggregator) -> None:
        self.inner, self.seen, self.calls = inner, torch.empty(0), 0

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        self.seen, self.calls = updates.clone(), self.calls + 1
        return self.inner.aggregate(updates, weights, ctx)


def _step(rule: str, params: dict[str, Any], *, adapt: bool, seed: int = 0):
    benign, own = _round(seed=seed)
    u = torch.cat([own, benign])
    ctx = _ctx(len(u), u.shape[1])
    rec = Recorder(AGGREGATORS.create(rule, params))
    adapter = Adapter.for_attack(CLIENT_ATTACKS.create("adaptive", {}), rule) if adapt else None
    out = server_step(
        _valid(u), ctx, ServerPlugins(aggregator=rec, adapter=adapter), server_lr=1.0, malicious=MALICIOUS
    )
    return out, rec, benign, own


RULES = [
    ("krum", {}, "any"),
    ("multi_krum", {"num_malicious": 2}, "all"),
    ("multi_metrics", {}, "all"),
    ("flame", {"noise_lambda": 0.0}, "all"),
]


@pytest.mark.parametrize(("rule", "params", "need"), RULES)
def test_the_adapted_update_passes_where_the_attackers_own_is_rejected(
    rule: str, params: dict[str, Any], need: str
) -> None:
    plain, _, _, _ = _step(rule, params, adapt=False)
    assert not set(MALICIOUS) & set(plain.accepted), plain.accepted  # the unadapted backdoor is rejected
    out, rec, benign, _ = _step(rule, params, adapt=True)
    kept = set(MALICIOUS) & set(out.accepted)
    assert kept if need == "any" else kept == set(MALICIOUS), out.accepted
    a = out.adapted
    assert a is not None and a.replaced == MALICIOUS and a.passes and a.mix is not None and 0.0 < a.mix < 1.0
    assert torch.equal(rec.seen[2:], benign)  # benign rows untouched
    assert torch.allclose(rec.seen[:2], a.updates[:2])
    assert rec.calls == 1  # the attackers' probes ran on copies of the server's aggregator


def test_flame_adaptation_keeps_norm_and_cosine_inside_the_benign_range() -> None:
    _, rec, benign, _ = _step("flame", {"noise_lambda": 0.0}, adapt=True)
    mu = benign.mean(0)
    median = float(torch.quantile(benign.norm(dim=1).double(), 0.5))  # the benign median norm
    cos = torch.nn.functional.cosine_similarity(rec.seen[:2], mu[None])
    benign_cos = torch.nn.functional.cosine_similarity(benign, mu[None])
    assert bool((rec.seen[:2].norm(dim=1) <= median + 1e-5).all())  # nothing for FLAME to clip
    assert bool((cos >= benign_cos.min() - 1e-6).all())


def test_norm_clipping_adaptation_projects_onto_the_bound_and_keeps_the_direction() -> None:
    plain, _, _, own = _step("norm_clipping", {"max_norm": 5.0}, adapt=False)
    assert all(plain.scores[i] > 1.0 for i in MALICIOUS)  # the rule clips the attackers' updates
    out, rec, _, own = _step("norm_clipping", {"max_norm": 5.0}, adapt=True)
    assert all(out.scores[i] <= 1.0 for i in MALICIOUS)
    norms = rec.seen[:2].norm(dim=1)
    assert torch.allclose(norms, torch.full((2,), 5.0), atol=1e-4)
    assert torch.allclose(torch.nn.functional.cosine_similarity(rec.seen[:2], own), torch.ones(2), atol=1e-6)
    assert out.adapted is not None and out.adapted.mix == 1.0 and out.adapted.passes


def test_the_mix_is_the_largest_that_passes() -> None:
    benign, own = _round()
    u = torch.cat([own, benign])
    ctx = _ctx(len(u), u.shape[1])
    krum = AGGREGATORS.create("multi_krum")

    def probe(rows: torch.Tensor) -> Verdict:
        v = u.clone()
        v[:2] = rows
        res = copy.deepcopy(krum).aggregate(v, torch.ones(len(u)), ctx)
        return Verdict(tuple(i in res.accepted for i in MALICIOUS), tuple(res.scores[i] for i in MALICIOUS))

    a = adapt_updates(benign, own, rule="multi_krum", probe=probe, steps=14)
    mu = benign.mean(0)
    assert a.passes and torch.allclose(a.updates, mix_rows(own, mu, a.mix))
    assert all(probe(mix_rows(own, mu, a.mix)).accepted)
    assert not all(probe(mix_rows(own, mu, a.mix + 2.0**-12)).accepted)  # a little more backdoor is rejected


def test_rows_the_rule_already_accepts_are_sent_unchanged_and_hopeless_rows_unmixed() -> None:
    benign, own = _round()
    ok = adapt_updates(benign, own, rule="krum", probe=lambda r: Verdict((True, True), (0.0, 0.0)))
    assert ok.mix == 1.0 and ok.passes and torch.equal(ok.updates, own)
    never = adapt_updates(benign, own, rule="krum", probe=lambda r: Verdict((False, False), (0.0, 0.0)))
    assert not never.passes and torch.equal(never.updates, own)
    lam, rows = largest_passing_mix(lambda x: torch.tensor([x]), lambda r: float(r) <= 0.5, steps=20)  # type: ignore[misc]
    assert abs(lam - 0.5) < 1e-5 and float(rows) <= 0.5


def test_the_adapter_resolves_the_rule_the_attackers_simulate() -> None:
    assert Adapter.for_attack(None, "krum") is None
    assert Adapter.for_attack(CLIENT_ATTACKS.create("pgd", {}), "krum") is None  # not defense-aware
    own = Adapter.for_attack(CLIENT_ATTACKS.create("adaptive", {}), "flame")
    assert own is not None and own.rule == "flame" and own.target is None  # the server's own instance
    same = Adapter.for_attack(CLIENT_ATTACKS.create("adaptive", {"adapt_to": "flame"}), "flame")
    assert same is not None and same.target is None
    named = Adapter.for_attack(CLIENT_ATTACKS.create("adaptive", {"adapt_to": "multi_krum"}), "flame")
    assert named is not None and named.rule == "multi_krum" and type(named.target).__name__ == "MultiKrum"
    spec = {"adapt_to": {"name": "krum", "params": {"num_malicious": 2}}}
    explicit = Adapter.for_attack(CLIENT_ATTACKS.create("adaptive", spec), "krum")
    assert explicit is not None and explicit.target is not None and explicit.target.num_malicious == 2  # type: ignore[attr-defined]
    # wherever it sits in a chain of wrappers
    wrapped = CLIENT_ATTACKS.create("pgd", {"base": {"name": "adaptive", "params": {"adapt_to": "krum"}}})
    assert isinstance(defense_aware(wrapped), AdaptiveBackdoor)
    assert Adapter.for_attack(wrapped, "fedavg") is not None


def test_the_adaptation_stage_leaves_rounds_without_attackers_or_benign_rows_alone() -> None:
    benign, own = _round()
    u = torch.cat([own, benign])
    ctx = _ctx(len(u), u.shape[1])
    adapter = Adapter.for_attack(CLIENT_ATTACKS.create("adaptive", {}), "krum")
    out = server_step(_valid(u), ctx, ServerPlugins(adapter=adapter), server_lr=1.0, malicious=(30, 31))
    assert out.adapted is not None and out.adapted.replaced == () and torch.equal(out.adapted.updates, u)
    two = _ctx(2, u.shape[1])
    out = server_step(_valid(own), two, ServerPlugins(adapter=adapter), server_lr=1.0, malicious=MALICIOUS)
    assert out.adapted is not None and out.adapted.skipped and torch.equal(out.adapted.updates, own)


# ---- scenarios ----

BASE: dict[str, Any] = {
    "attacks": {"plan": {"malicious": 2}, "backdoor": {"name": "adaptive", "params": {"adapt_to": "krum"}}},
    "defenses": {"aggregator": {"name": "krum"}},
}


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(data)
    return [str(p) for p in e.value.problems]


def test_scenarios_that_cannot_adapt_are_refused_at_load() -> None:
    assert scenario_from_dict(BASE).attacks.backdoor is not None
    assert any(
        "the per-client updates the adaptive backdoor reshapes" in p
        for p in _problems({**BASE, "compression": {"name": "fetchsgd"}})
    )
    bad = copy.deepcopy(BASE)
    bad["attacks"]["backdoor"]["params"]["adapt_to"] = "krun"
    assert any("unknown aggregator 'krun' (did you mean 'krum'?)" in p for p in _problems(bad))
    root = copy.deepcopy(BASE)
    root["attacks"]["backdoor"]["params"]["adapt_to"] = "fltrust"
    assert any("'fltrust' needs the server's root update" in p for p in _problems(root))
    root["defenses"]["aggregator"]["name"] = "fltrust"
    scenario_from_dict(root)  # a server running FLTrust computes it


def test_the_multi_metrics_scenario_loads() -> None:
    s = load_scenario("scenarios/adaptive_multi_metrics.toml")
    assert s.defenses.aggregator.name == "multi_metrics" and s.attacks.plan.malicious == 1
    assert s.attacks.backdoor is not None and s.attacks.backdoor.name == "adaptive"
    atk = CLIENT_ATTACKS.create(s.attacks.backdoor.name, s.attacks.backdoor.params)
    assert isinstance(atk, AdaptiveBackdoor) and atk.target_aggregator == ("multi_metrics", None)
    assert type(atk.base).__name__ == "PGD" and type(atk.base.base).__name__ == "EdgeCase"  # type: ignore[attr-defined]


# ---- a tiny federated run ----

TINY = [
    "simulation.engine='inline'",
    "data.max_examples=1200",
    "data.num_clients=8",
    "data.partitioner={name='iid'}",
    "federation.clients_per_round=5",
    "federation.rounds=3",
    "federation.local_epochs=2",
    "model.name='mlp'",
    "model.params={hidden=[32]}",
    "model.warm_start={rounds=1}",
    "defenses.aggregator={name='multi_krum'}",
    "attacks.plan={malicious = 1, start_round = 1, every = 1, guarantee_sampled = true}",
]
BACKDOOR = "{name='model_replacement', params={base={name='badnets', params={target_label=2}}}}"


def test_an_adaptive_attacker_is_accepted_more_often_by_multi_krum() -> None:
    plain = run(
        load_scenario("scenarios/adaptive_multi_metrics.toml", [*TINY, f"attacks.backdoor={BACKDOOR}"]),
        write=False,
    )
    adaptive = run(
        load_scenario(
            "scenarios/adaptive_multi_metrics.toml",
            [
                *TINY,
                f"attacks.backdoor={{name='adaptive', params={{adapt_to='multi_krum', base={BACKDOOR}}}}}",
            ],
        ),
        write=False,
    )
    for r in (plain, adaptive):
        assert r.status == "completed" and len(r.rounds) == 3 and all(rr.malicious for rr in r.rounds)
    assert plain.defense is not None and adaptive.defense is not None
    assert adaptive.defense["tpr"] < plain.defense["tpr"]
    accepted = [set(rr.malicious) <= set(rr.accepted) for rr in adaptive.rounds]
    assert sum(accepted) > sum(set(rr.malicious) <= set(rr.accepted) for rr in plain.rounds)
