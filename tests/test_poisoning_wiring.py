"""Untargeted poisoning wired into the round core: the server step's poisoning stage replaces exactly the
acting attackers' rows with what the reviewed pure functions compute from the right rows (benign for
omniscient, the attackers' own for partial knowledge), the aggregator sees them, and scenarios that cannot run
it are refused at load with one clear problem each."""

from __future__ import annotations

import copy
import dataclasses
from statistics import NormalDist
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import attacks  # noqa: F401  (registers the plug-ins)
import defenses  # noqa: F401
from attacks.base import CLIENT_ATTACKS, POISONING_ATTACKS
from attacks.poisoning import (
    agr_tailored,
    alie_updates,
    fang_trimmed_mean,
    gaussian_noise,
    ipm_updates,
    min_max_updates,
    sign_flip,
)
from attacks.poisoning.checks import _secure_aggregation
from attacks.poisoning.label_flip import LabelFlip, flip_labels
from defenses.aggregation.median import coordinatewise_median
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext, make_generator
from simulator.flat import Layout
from simulator.round import Poisoner, ServerPlugins, ValidReply, server_step
from simulator.scenario import Scenario, ScenarioError, load_scenario, scenario_from_dict
from simulator.scenario.base import PluginSpec

SEED, ROUND = 3, 5


class Recorder(Aggregator):
    """Records the update matrix it is given and counts its calls, then aggregates with ``inner``."""

    def __init__(self, inner: Aggregator) -> None:
        self.inner, self.seen, self.calls = inner, torch.empty(0), 0

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        self.seen, self.calls = updates.clone(), self.calls + 1
        return self.inner.aggregate(updates, weights, ctx)


def _round(
    updates: torch.Tensor, ids: tuple[int, ...], sizes: tuple[int, ...] | None = None
) -> tuple[list[ValidReply], RoundContext]:
    n, d = updates.shape
    sizes = sizes or tuple(10 + i for i in range(n))
    valid = [
        ValidReply(pid, k, {"delta": updates[i].clone()}, {"num-examples": k, "train-loss": 0.0}, 0)
        for i, (pid, k) in enumerate(zip(ids, sizes))
    ]
    ctx = RoundContext(
        server_round=ROUND,
        seed=SEED,
        global_vector=torch.linspace(-1.0, 1.0, d),
        layout=Layout(("w",), ((d,),)),
        client_ids=ids,
        num_examples=sizes,
        num_clients=40,
        expected_clients_per_round=float(n),
    )
    return valid, ctx


def _updates(n: int = 10, d: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + torch.linspace(0.0, 1.0, d)


IDS = (1, 4, 5, 8, 11, 13, 20, 22, 30, 39)  # partition ids of the rows (not the row numbers)


def _step(
    updates: torch.Tensor,
    name: str,
    params: dict[str, Any] | None = None,
    *,
    malicious: tuple[int, ...],
    inner: Aggregator | None = None,
    ids: tuple[int, ...] = IDS,
):
    valid, ctx = _round(updates, ids)
    rec = Recorder(inner if inner is not None else AGGREGATORS.create("fedavg"))
    poisoner = Poisoner.from_spec(PluginSpec(name=name, params=params or {}))
    plugins = ServerPlugins(aggregator=rec, poisoner=poisoner)
    out = server_step(valid, ctx, plugins, server_lr=1.0, malicious=malicious)
    return out, rec, ctx


def _rows(ids: tuple[int, ...], chosen: tuple[int, ...]) -> tuple[list[int], list[int]]:
    mal = [i for i, p in enumerate(ids) if p in chosen]
    return mal, [i for i in range(len(ids)) if i not in mal]


# ---- the stage replaces exactly the malicious rows, with the pure function's output ----


def test_omniscient_alie_replaces_exactly_the_acting_attackers_rows() -> None:
    u = _updates()
    malicious = (5, 22, 39)
    out, rec, _ = _step(u, "alie", malicious=malicious)
    mal, ben = _rows(IDS, malicious)
    assert mal == [2, 7, 9]
    expected = alie_updates(u[ben], num_malicious=3, num_clients=10)
    assert torch.equal(rec.seen[ben], u[ben])  # benign rows untouched
    assert torch.allclose(rec.seen[mal], expected)
    assert not torch.allclose(rec.seen[mal], u[mal])
    assert out.poisoned == malicious and out.poisoning_skipped is None


def test_partial_knowledge_uses_only_the_attackers_own_rows() -> None:
    u = _updates()
    malicious = (1, 11, 30)
    mal, ben = _rows(IDS, malicious)
    _, rec, _ = _step(u, "alie", {"knowledge": "partial"}, malicious=malicious)
    assert torch.allclose(rec.seen[mal], alie_updates(u[mal], num_malicious=3, num_clients=10))
    assert torch.equal(rec.seen[ben], u[ben])
    # the omniscient attack on the same round differs: it reads the benign rows
    assert not torch.allclose(rec.seen[mal], alie_updates(u[ben], num_malicious=3, num_clients=10))


def test_changing_a_benign_row_changes_omniscient_but_not_partial_crafts() -> None:
    u = _updates()
    malicious = (4, 8)
    mal, ben = _rows(IDS, malicious)
    v = u.clone()
    v[ben[0]] += 5.0
    crafts = {}
    for knowledge in ("omniscient", "partial"):
        _, a, _ = _step(u, "ipm", {"knowledge": knowledge}, malicious=malicious)
        _, b, _ = _step(v, "ipm", {"knowledge": knowledge}, malicious=malicious)
        crafts[knowledge] = (a.seen[mal], b.seen[mal])
    assert not torch.allclose(*crafts["omniscient"])
    assert torch.equal(*crafts["partial"])
    assert torch.allclose(crafts["partial"][0], ipm_updates(u[mal], num_malicious=2, epsilon=0.1))


def test_sign_flip_per_attacker_flips_each_attackers_own_update() -> None:
    u = _updates()
    malicious = (13, 20)
    mal, _ = _rows(IDS, malicious)
    _, rec, _ = _step(
        u, "sign_flip", {"knowledge": "partial", "per_attacker": True, "scale": 2.0}, malicious=malicious
    )
    assert torch.allclose(rec.seen[mal], -2.0 * u[mal])
    assert torch.allclose(rec.seen[mal], sign_flip(u[mal], num_malicious=2, scale=2.0, per_attacker=True))


def test_randomised_attacks_draw_from_the_rounds_poisoning_generator() -> None:
    u = _updates()
    malicious = (1, 39)
    mal, ben = _rows(IDS, malicious)
    _, rec, _ = _step(u, "gaussian", {"std": 0.5}, malicious=malicious)
    gen = make_generator(SEED, ROUND, "poisoning")
    expected = gaussian_noise(u[mal], num_malicious=2, std=0.5, generator=gen)
    assert torch.equal(rec.seen[mal], expected)
    _, rec2, _ = _step(u, "fang_trimmed_mean", {"model_space": True}, malicious=malicious)
    _, ctx = _round(u, IDS)
    expected = fang_trimmed_mean(
        u[ben],
        num_malicious=2,
        reference=ctx.global_vector,
        generator=make_generator(SEED, ROUND, "poisoning"),
    )
    assert torch.allclose(rec2.seen[mal], expected)


def test_min_max_matches_the_pure_function() -> None:
    u = _updates()
    malicious = (4, 5, 8)
    mal, ben = _rows(IDS, malicious)
    _, rec, _ = _step(u, "min_max", {"perturbation": "unit_vec"}, malicious=malicious)
    assert torch.allclose(rec.seen[mal], min_max_updates(u[ben], num_malicious=3, perturbation="unit_vec"))


def test_no_acting_attacker_in_the_round_leaves_the_matrix_alone() -> None:
    u = _updates()
    out, rec, _ = _step(u, "alie", malicious=(2, 3))  # attackers sampled but dropped: not among the rows
    assert torch.equal(rec.seen, u) and out.poisoned == ()
    valid, ctx = _round(u, IDS)
    rec = Recorder(AGGREGATORS.create("fedavg"))
    server_step(valid, ctx, ServerPlugins(aggregator=rec), server_lr=1.0, malicious=(5, 22))  # no poisoner
    assert torch.equal(rec.seen, u)


def test_too_few_known_updates_leave_the_attackers_honest_with_a_reason() -> None:
    u = _updates(n=4)
    ids = (0, 1, 2, 3)
    out, rec, _ = _step(u, "alie", malicious=(0, 1, 2), ids=ids)  # one benign row: no σ
    assert torch.equal(rec.seen, u) and out.poisoned == ()
    assert out.poisoning_skipped is not None and "needs 2" in out.poisoning_skipped
    out, rec, _ = _step(u, "min_sum", {"knowledge": "partial"}, malicious=(3,), ids=ids)  # one own row
    assert torch.equal(rec.seen, u) and "needs 2" in (out.poisoning_skipped or "")


@pytest.mark.parametrize("name", sorted(POISONING_ATTACKS.names()))
@pytest.mark.parametrize("knowledge", ["omniscient", "partial"])
def test_every_attack_crafts_the_attackers_rows_only(name: str, knowledge: str) -> None:
    u = _updates()
    malicious = (1, 8, 22)
    mal, ben = _rows(IDS, malicious)
    out, rec, _ = _step(
        u, name, {"knowledge": knowledge}, malicious=malicious, inner=AGGREGATORS.create("median")
    )
    assert out.poisoned == malicious and out.new_global is not None
    assert torch.equal(rec.seen[ben], u[ben])
    assert bool(torch.isfinite(rec.seen).all())
    assert not torch.equal(rec.seen[mal], u[mal])


# ---- the aggregator sees the crafted rows ----


def test_alie_against_median_moves_the_aggregate_by_z_sigma() -> None:
    """n = 5, f = 2: s = ⌊5/2 + 1⌋ − 2 = 1, z = Φ⁻¹(4/5). Benign coordinates {0, 1, 2} (μ = 1, σ = 1) and
    {10, 12, 14} (μ = 12, σ = 2); the two attackers' honest rows sit at the mean. Honest median: μ; with ALIE
    the two crafted values μ − zσ are the 2nd and 3rd smallest, so the median becomes μ − zσ."""
    benign = torch.tensor([[0.0, 10.0], [1.0, 12.0], [2.0, 14.0]])
    own = torch.tensor([[1.0, 12.0], [1.0, 12.0]])
    u = torch.cat([benign[:1], own[:1], benign[1:], own[1:]])  # rows: b, m, b, b, m
    ids = (0, 1, 2, 3, 4)
    z = NormalDist().inv_cdf(4 / 5)
    valid, ctx = _round(u, ids)
    honest = server_step(valid, ctx, ServerPlugins(aggregator=AGGREGATORS.create("median")), server_lr=1.0)
    assert honest.new_global is not None
    assert torch.allclose(honest.new_global - ctx.global_vector, torch.tensor([1.0, 12.0]))
    out, _, _ = _step(u, "alie", malicious=(1, 4), inner=AGGREGATORS.create("median"), ids=ids)
    assert out.new_global is not None
    moved = (out.new_global - ctx.global_vector) - torch.tensor([1.0, 12.0])
    assert torch.allclose(moved, torch.tensor([-z, -2.0 * z]), atol=1e-5)


def test_agr_tailored_simulates_the_servers_aggregator_without_touching_it() -> None:
    u = _updates()
    malicious = (4, 11, 30)
    mal, ben = _rows(IDS, malicious)
    out, rec, _ = _step(u, "agr_tailored", malicious=malicious, inner=AGGREGATORS.create("median"))
    expected = agr_tailored(u[ben], num_malicious=3, agr=coordinatewise_median)
    assert torch.allclose(rec.seen[mal], expected, atol=1e-6)
    assert rec.calls == 1  # the attackers' probes ran on deep copies of the server's aggregator
    assert out.new_global is not None


def test_agr_tailored_can_name_its_own_target_rule() -> None:
    p = Poisoner.from_spec(PluginSpec(name="agr_tailored", params={"aggregator": "trimmed_mean"}))
    assert type(p.target) is type(AGGREGATORS.create("trimmed_mean"))
    u = _updates()
    malicious = (4, 11, 30)
    mal, ben = _rows(IDS, malicious)
    _, rec, ctx = _step(
        u,
        "agr_tailored",
        {"aggregator": "trimmed_mean"},
        malicious=malicious,
        inner=AGGREGATORS.create("median"),
    )
    tm = AGGREGATORS.create("trimmed_mean")
    ids = tuple(IDS[i] for i in mal + ben)
    w = torch.tensor([float(ctx.num_examples[i]) for i in mal + ben])
    c = dataclasses.replace(ctx, client_ids=ids, num_examples=tuple(ctx.num_examples[i] for i in mal + ben))

    def by_hand(m: torch.Tensor) -> torch.Tensor:
        return copy.deepcopy(tm).aggregate(m, w, c).update

    assert torch.allclose(rec.seen[mal], agr_tailored(u[ben], num_malicious=3, agr=by_hand), atol=1e-6)


# ---- registry and the client-side label flip ----


def test_the_registry_holds_every_attack_with_a_knowledge_parameter() -> None:
    assert POISONING_ATTACKS.names() == [
        "agr_tailored",
        "alie",
        "fang_krum",
        "fang_trimmed_mean",
        "gaussian",
        "ipm",
        "min_max",
        "min_sum",
        "sign_flip",
    ]
    for e in POISONING_ATTACKS.entries():
        assert "knowledge" in e.params.model_fields, e.name
        assert POISONING_ATTACKS.create(e.name).knowledge == "omniscient"


def test_label_flip_is_a_client_attack_that_reverses_labels() -> None:
    assert "label_flip" in CLIENT_ATTACKS
    atk = CLIENT_ATTACKS.create("label_flip")
    assert isinstance(atk, LabelFlip) and atk.target_label is None
    assert atk.reserve(SimpleNamespace(num_classes=10)) is None and atk.num_classes == 10
    x, y = torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 5, 9])
    x2, y2 = atk.poison(x, y, None)  # type: ignore[arg-type]
    assert x2 is x and y2.tolist() == [9, 8, 4, 0]
    assert flip_labels(torch.tensor([0, 2]), 3).tolist() == [2, 0]
    assert atk.backdoor_testset(x, y) is None
    with pytest.raises(ValueError, match="labels must lie"):
        flip_labels(torch.tensor([3]), 3)


# ---- load-time checks ----

BASE: dict[str, Any] = {"attacks": {"plan": {"malicious": 2}, "poisoning": {"name": "alie"}}}


def _with(**sections: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    for key, value in sections.items():
        cur = d
        *path, last = key.split("__")
        for part in path:
            cur = cur.setdefault(part, {})
        if value is None:
            cur.pop(last, None)
        else:
            cur[last] = value
    return d


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(data)
    return [str(p) for p in e.value.problems]


def test_a_poisoning_scenario_loads_and_older_scenarios_keep_their_digests() -> None:
    s = scenario_from_dict(BASE)
    assert s.attacks.poisoning is not None and s.attacks.poisoning.name == "alie"
    assert "poisoning" not in Scenario().resolved()["attacks"]  # unset: not in the dump, so not in the digest
    assert s.resolved()["attacks"]["poisoning"] == {"name": "alie", "params": {}}


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (_with(attacks__plan=None), "attacks.plan: [attacks.poisoning] ('alie') needs attackers"),
        (_with(attacks__plan={"malicious": 0}), "needs attackers"),
        (_with(attacks__plan={"malicious_ids": []}), "needs attackers"),
        (_with(attacks__plan={"malicious_fraction": 0.01}), "needs attackers"),
        (_with(attacks__backdoor={"name": "label_flip"}), "attacks.poisoning: one client attack at a time"),
        (_with(compression={"name": "fetchsgd"}), "compression.name: 'fetchsgd' aggregates in sketch space"),
        (
            _with(compression={"name": "srht", "params": {"aggregate_in_sketch_space": True}}),
            "compression.name: 'srht' aggregates in sketch space",
        ),
        (
            _with(attacks__poisoning={"name": "alei"}),
            "attacks.poisoning.name: unknown poisoning attack 'alei' (did you mean 'alie'?)",
        ),
        (
            _with(attacks__poisoning={"name": "alie", "params": {"zz": 1}}),
            "attacks.poisoning.params.zz: unknown",
        ),
        (
            _with(attacks__poisoning={"name": "alie", "params": {"knowledge": "all"}}),
            "attacks.poisoning.params.knowledge",
        ),
        (
            _with(attacks__poisoning={"name": "sign_flip", "params": {"per_attacker": True}}),
            "attacks.poisoning.params: 'sign_flip': per_attacker = true flips each attacker's own update",
        ),
        (
            _with(attacks__poisoning={"name": "agr_tailored", "params": {"aggregator": "medain"}}),
            "attacks.poisoning.params.aggregator: unknown aggregator 'medain' (did you mean 'median'?)",
        ),
        (
            _with(
                attacks__poisoning={"name": "agr_tailored", "params": {"aggregator_params": {"beta": 0.1}}}
            ),
            "aggregator_params without aggregator",
        ),
    ],
)
def test_scenarios_that_cannot_poison_are_refused_at_load(data: dict[str, Any], needle: str) -> None:
    problems = _problems(data)
    assert len(problems) == 1, problems
    assert needle in problems[0], problems


def test_a_leakage_experiment_refuses_poisoning() -> None:
    data = {"kind": "leakage", "attacks": {"inversion": {"name": "dlg"}, "poisoning": {"name": "ipm"}}}
    assert any(p.startswith("attacks.poisoning: a leakage experiment") for p in _problems(data))


@pytest.mark.skipif("secure_aggregation" not in Scenario.model_fields, reason="no [secure_aggregation] yet")
def test_a_secure_aggregation_scenario_refuses_poisoning() -> None:
    problems = _problems(_with(secure_aggregation={}))
    needle = "secure_aggregation: secure aggregation hides the per-client updates"
    assert any(p.startswith(needle) for p in problems), problems


def test_secure_aggregation_is_refused_when_a_section_turns_it_on() -> None:
    assert not _secure_aggregation(SimpleNamespace())
    assert not _secure_aggregation(SimpleNamespace(secure_aggregation=None))
    assert not _secure_aggregation(SimpleNamespace(secure_aggregation=SimpleNamespace(enabled=False)))
    assert _secure_aggregation(SimpleNamespace(secure_aggregation=SimpleNamespace(enabled=True)))
    assert _secure_aggregation(SimpleNamespace(secure_aggregation=True))


def test_label_flip_loads_in_the_client_attack_slot_and_the_example_scenario_loads() -> None:
    s = scenario_from_dict({"attacks": {"plan": {"malicious": 2}, "backdoor": {"name": "label_flip"}}})
    assert s.attacks.backdoor is not None and s.attacks.poisoning is None
    ex = load_scenario("scenarios/poisoning_alie.toml")
    assert ex.attacks.poisoning is not None and ex.attacks.poisoning.name == "alie"
    assert ex.defenses.aggregator.name == "median" and ex.attacks.plan.malicious_fraction == 0.2
