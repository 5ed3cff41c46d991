"""[secure_aggregation] in a federated run: the server's plug-ins see only the sum (as SecAgg+ encodes it),
the load-time rules refuse what would need one client's update, and the ledger's headline becomes
the aggregate."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import defenses  # noqa: F401  (registers the plug-ins)
from simulator import load_scenario
from simulator.context import RoundContext
from simulator.flat import Layout
from simulator.round import ServerPlugins, ValidReply, server_step
from simulator.round.secure_sum import SimulatedSecureAggregation, secagg_params
from simulator.runner import RunFailed, run
from simulator.scenario import ScenarioError
from simulator.scenario.secure_aggregation import SecureAggregationConfig
from simulator.secagg import simulate

QUICK = "scenarios/quickstart.toml"
TINY = [
    "simulation.engine='inline'",
    "data.max_examples=1000",
    "federation.rounds=2",
    "federation.local_epochs=1",
    "model.name='mlp'",
    "model.params={hidden=[32]}",
]


@pytest.mark.parametrize(
    ("sets", "field"),
    [
        (["defenses.aggregator.name='median'"], "defenses.aggregator.name"),
        (["defenses.aggregator.name='krum'"], "defenses.aggregator.name"),
        (["attacks.inversion={name='inverting_gradients'}"], "attacks.inversion"),
        (
            [
                "audit={level='client'}",
                "privacy.level='client'",
                "privacy.client={clip_norm=1.0, noise_multiplier=1.0}",
            ],
            "audit.level",
        ),
        (["compression={name='srht', params={ratio=0.1}}"], "compression.name"),
        (["federation.clients_per_round=1"], "federation.clients_per_round"),
        (["secure_aggregation={mode='secaggplus'}", "simulation.engine='ray'"], "secure_aggregation.mode"),
    ],
)
def test_what_needs_one_clients_update_is_refused_at_load(sets: list[str], field: str) -> None:
    with pytest.raises(ScenarioError) as e:
        load_scenario(QUICK, ["secure_aggregation={}", *sets])
    assert any(p.path == field for p in e.value.problems), str(e.value)
    assert "secure aggregation" in str(e.value)


def test_fedavg_and_server_defenses_pass() -> None:
    s = load_scenario("scenarios/secagg_fedavg.toml")
    assert s.secure_aggregation is not None and s.secure_aggregation.mode == "simulated"


def _replies(n: int, d: int) -> tuple[list[ValidReply], RoundContext]:
    g = torch.Generator().manual_seed(3)
    valid = [ValidReply(i, 5 + 3 * i, {"delta": torch.randn(d, generator=g) * 0.01}, {}, 0) for i in range(n)]
    ctx = RoundContext(
        server_round=2,
        seed=0,
        global_vector=torch.zeros(d),
        layout=Layout(("w",), ((d,),)),
        client_ids=tuple(range(n)),
        num_examples=tuple(r.num_examples for r in valid),
        num_clients=n,
        expected_clients_per_round=float(n),
    )
    return valid, ctx


def test_server_step_hands_the_plugins_the_secure_sum_only() -> None:
    """The observer gets no per-client updates; the update equals SecAgg+'s decoded weighted mean, exactly the
    encoding's (same draws), and within its error bound of the exact weighted mean."""
    valid, ctx = _replies(5, 300)
    seen: dict[str, Any] = {}

    def observer(rnd: int, v: list[ValidReply], updates: torch.Tensor | None, c: RoundContext) -> None:
        seen["updates"] = updates

    cfg = SecureAggregationConfig()
    secure = SimulatedSecureAggregation(cfg, key=7)
    out = server_step(valid, ctx, ServerPlugins(observer=observer, secure_sum=secure), server_lr=1.0)
    assert seen["updates"] is None
    counts = [r.num_examples for r in valid]
    u = torch.stack([r.arrays["delta"] for r in valid])
    again = SimulatedSecureAggregation(cfg, key=7)
    ref, _ = again(u, torch.tensor(counts, dtype=torch.float32), ctx)
    assert out.new_global is not None and torch.equal(out.new_global, ref)
    exact = (torch.tensor(counts, dtype=torch.float64) @ u.double()) / sum(counts)
    bound = simulate(u, counts, secagg_params(cfg, counts), generator=torch.Generator().manual_seed(0))
    assert float((out.new_global.double() - exact).abs().max()) <= bound.max_abs_error_bound
    assert out.accepted == list(range(5))


def test_a_secure_run_matches_the_plain_run_to_the_quantisation_error() -> None:
    plain = run(load_scenario(QUICK, TINY), write=False)
    secure = run(load_scenario(QUICK, [*TINY, "secure_aggregation={}"]), write=False)
    for a, b in zip(plain.rounds, secure.rounds):
        assert a.main_accuracy is not None and b.main_accuracy is not None
        assert abs(a.main_accuracy - b.main_accuracy) <= 0.01
        assert b.clients_aggregated == a.clients_aggregated


def test_flowers_default_max_weight_with_small_clients_is_refused_before_round_one() -> None:
    s = load_scenario(QUICK, [*TINY, "secure_aggregation={max_weight=1000.0}"])
    with pytest.raises(RunFailed, match=r"secure_aggregation\.max_weight"):
        run(s, write=False)


def test_local_noise_behind_secure_aggregation_is_accounted_on_the_aggregate() -> None:
    """Without secure aggregation each noisy update is read in the clear (local DP, the headline); behind it
    the server holds the sum alone: the headline is the aggregate view, far smaller, and the quantisation
    slack makes it no smaller than the same mechanism's aggregate view without secure aggregation."""
    dp = [
        "privacy.level='client'",
        "privacy.noise_seed=3",
        "privacy.accountant='rdp'",
        "privacy.client={clip_norm=1.0, noise_multiplier=1.0, noise='local'}",
    ]
    clear = run(load_scenario(QUICK, [*TINY, *dp]), write=False)
    secure = run(load_scenario(QUICK, [*TINY, *dp, "secure_aggregation={}"]), write=False)
    assert clear.privacy is not None and secure.privacy is not None
    assert clear.privacy["epsilon_view"] == "update_in_clear"
    assert (
        secure.privacy["epsilon_view"] == "aggregate" and "update_in_clear" not in secure.privacy["epsilons"]
    )
    agg_clear = clear.privacy["epsilons"]["aggregate"]
    assert agg_clear <= secure.privacy["epsilon"] <= agg_clear * 1.01
    assert secure.privacy["epsilon"] < 0.5 * clear.privacy["epsilon"]


def test_flowers_own_secaggplus_in_a_run_matches_the_simulated_mode_and_recovers_dropouts() -> None:
    """mode = "secaggplus" runs Flower's SecAggPlusWorkflow + secaggplus_mod each round over the cohort's
    updates: the same per-round accuracy as the simulated encoding (both quantise the same way), and with
    dropouts after key sharing the survivors' sum is recovered and only they count as aggregated."""
    sim = run(
        load_scenario(QUICK, [*TINY, "federation.clients_per_round=4", "secure_aggregation={}"]), write=False
    )
    real = run(
        load_scenario(
            QUICK,
            [*TINY, "federation.clients_per_round=4", "secure_aggregation={mode='secaggplus', num_shares=3}"],
        ),
        write=False,
    )
    for a, b in zip(sim.rounds, real.rounds):
        assert a.main_accuracy is not None and b.main_accuracy is not None
        assert abs(a.main_accuracy - b.main_accuracy) <= 0.01
    drops = run(
        load_scenario(
            QUICK,
            [
                *TINY,
                "federation.clients_per_round=5",
                "federation.rounds=3",
                "secure_aggregation={mode='secaggplus', num_shares=5, "
                "reconstruction_threshold=3, drop_after_share_keys=0.3, seed=2}",
            ],
        ),
        write=False,
    )
    assert drops.status == "completed"
    # seed 2: round 1 loses 3 of 5 clients (too few left: Flower halts, the model stays), rounds 2-3 lose 2
    # and the protocol recovers the 3 survivors' sum
    assert drops.rounds[0].skipped is not None and "collect_masked_vectors" in drops.rounds[0].skipped
    assert [r.clients_aggregated for r in drops.rounds[1:]] == [3, 3]
    assert all(set(r.accepted) <= set(r.sampled) for r in drops.rounds)


def test_secaggplus_dropouts_need_the_protocol() -> None:
    with pytest.raises(ScenarioError, match="drop_after_share_keys"):
        load_scenario(QUICK, ["secure_aggregation={drop_after_share_keys=0.2}"])


def test_a_leakage_scenario_points_to_its_own_aggregate_setting() -> None:
    with pytest.raises(ScenarioError, match=r"\[leakage\] clients = K") as e:
        load_scenario("scenarios/leakage_ig.toml", ["secure_aggregation={}"])
    assert any(p.path == "secure_aggregation" for p in e.value.problems)
