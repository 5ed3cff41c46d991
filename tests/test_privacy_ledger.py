"""The honest-privacy table: each path that used to under-report ε, driven through the mechanism that runs,
beside an independent dp-accounting computation; and every shipped DP scenario's ε recomputed from its own
``privacy.ledger`` with dp-accounting alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from dp_accounting import dp_event as E
from dp_accounting.pld import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation as NR
from dp_accounting.rdp import RdpAccountant

from simulator import load_scenario, run
from simulator.context import RoundContext
from simulator.dp.build import build_privacy
from simulator.dp.mechanism import ClientLevelDP
from simulator.flat import Layout
from simulator.scenario import ScenarioError

ROOT = Path(__file__).resolve().parents[1]
DP_FEDAVG = ROOT / "scenarios" / "dp_fedavg.toml"
D = 16


def _pld(event: E.DpEvent, count: int, delta: float = 1e-5, interval: float = 1e-4) -> float:
    acc = PLDAccountant(NR.ADD_OR_REMOVE_ONE, value_discretization_interval=interval)
    acc.compose(event, count)
    return float(acc.get_epsilon(delta))


def _rdp_replace(event: E.DpEvent, count: int, delta: float = 1e-5) -> float:
    acc = RdpAccountant(neighboring_relation=NR.REPLACE_ONE)
    acc.compose(event, count)
    return float(acc.get_epsilon(delta))


def _ctx(rnd: int, ids: tuple[int, ...]) -> RoundContext:
    return RoundContext(
        server_round=rnd,
        seed=0,
        global_vector=torch.zeros(D),
        layout=Layout(("w",), ((D,),)),
        client_ids=ids,
        num_examples=(1,) * len(ids),
        num_clients=100,
        expected_clients_per_round=10.0,
    )


def _drive(
    mech: ClientLevelDP, rounds: int, ids: tuple[int, ...], metrics: dict[str, float] | None = None
) -> None:
    for rnd in range(1, rounds + 1):
        mech.server_aggregate(torch.zeros(D), [dict(metrics or {}) for _ in ids], _ctx(rnd, ids))
        mech.round_report(rnd, [])


def test_dp_fedavg_adaptive_clipping_reports_the_mechanism_that_runs() -> None:
    """Row 1: bits shifted to ±½ (sensitivity ½), so Andrew et al.'s Theorem 1 holds: the ledger's per-round
    multiplier, computed from the noise stds that ran, is z = 1 and ε = PLD(Poisson(0.25, N(z)), 20) ≈
    8.08."""
    s = load_scenario(DP_FEDAVG)
    mech = build_privacy(s)
    assert isinstance(mech, ClientLevelDP) and mech.adaptive is not None
    _drive(mech, 20, tuple(range(50)), {"dp-clip-bit": 0.5})
    # independent: the update sum (sensitivity C, noise z_Δ·C) and the shifted-bit sum (sensitivity ½, noise
    # σ_b = 1)
    c = mech.clip_history[-1]
    z_eff = 1 / math.sqrt((c / (mech.update_z * c)) ** 2 + (0.5 / 1.0) ** 2)
    assert z_eff == pytest.approx(1.0, rel=1e-9)
    ref = _pld(E.PoissonSampledDpEvent(0.25, E.GaussianDpEvent(z_eff)), 20)
    assert mech.ledger.epsilon("aggregate") == pytest.approx(ref, rel=1e-9)
    assert ref == pytest.approx(8.08, abs=0.01)
    # with unshifted {0, 1} bits the same noise would be worth ≈ 13.2: the reason the bits are shifted
    z_bits01 = 1 / math.sqrt(mech.update_z**-2 + 1.0)
    assert _pld(E.PoissonSampledDpEvent(0.25, E.GaussianDpEvent(z_bits01)), 20) == pytest.approx(
        13.18, abs=0.01
    )
    with pytest.raises(ValueError, match="shifted"):
        mech.adaptive.update([1.0, 0.0], expected_clients=2, generator=torch.Generator())


def test_fixed_size_cohorts_are_replace_one_with_half_the_multiplier() -> None:
    """Row 2: 10 of 100 without replacement, z = 1, 3 rounds: replace-one moves the sum by 2C → z/2;
    ≈ 12.3."""
    s = _fixed_scenario()
    mech = build_privacy(s)
    _drive(mech, 3, tuple(range(10)))
    ref = _rdp_replace(E.SampledWithoutReplacementDpEvent(100, 10, E.GaussianDpEvent(0.5)), 3)
    assert mech.ledger.epsilon("aggregate") == pytest.approx(ref, rel=1e-9)
    assert ref == pytest.approx(12.34, abs=0.01)


def _fixed_scenario(**client: Any):
    from simulator.scenario import scenario_from_dict

    return scenario_from_dict(
        {
            "data": {"dataset": "mnist5k", "num_clients": 100},
            "federation": {"rounds": 3, "sampling": "fixed", "clients_per_round": 10},
            "privacy": {
                "level": "client",
                "accountant": "rdp",
                "client": {"clip_norm": 1.0, "noise_multiplier": 1.0, **client},
            },
        }
    )


def test_local_noise_headline_is_one_update_in_the_clear() -> None:
    """Row 3: each client adds N(0, (zC)²/m); without secure aggregation the server reads it: local DP with
    multiplier z/√m against add/remove (≈ 37.6) and z/(2√m) against replace-one (the reported one, larger)."""
    s = _fixed_scenario(noise="local")
    mech = build_privacy(s)
    _drive(mech, 3, tuple(range(10)))
    add_remove = _pld(E.GaussianDpEvent(1 / math.sqrt(10)), 3)
    replace = _pld(E.GaussianDpEvent(1 / (2 * math.sqrt(10))), 3, interval=1e-3)  # ε ≈ 106: a coarse grid
    assert add_remove == pytest.approx(37.62, abs=0.01)
    eps = mech.ledger.epsilons()
    # the ledger's exact Gaussian is never above dp-accounting's pessimistic PLD, and within its grid error
    assert eps["update_in_clear"] <= replace and eps["update_in_clear"] == pytest.approx(replace, rel=2e-3)
    assert mech.round_report(4, [])["epsilon"] == eps["update_in_clear"] and replace > add_remove
    # one more round for client 0 only: the worst client is now client 0 with 4 releases
    mech.server_aggregate(torch.zeros(D), [{}], _ctx(4, (0,)))
    four = _pld(E.GaussianDpEvent(1 / (2 * math.sqrt(10))), 4, interval=1e-3)
    assert mech.ledger.epsilon("update_in_clear") == pytest.approx(four, rel=2e-3)


def test_forced_inversion_targets_lose_amplification_and_a_curious_server_voids_central_dp() -> None:
    """Row 4: the server forces its targets into rounds 1..5; those rounds are unamplified for them. With
    central noise the curious server reads clipped updates before the noise: ε = ∞ for that view."""
    over = [
        "attacks.inversion={name='idlg', targets=[0], rounds=[1, 2, 3, 4, 5]}",
        "federation.rounds=20",
        "privacy.client={clip_norm=1.0, noise_multiplier=1.0}",
    ]
    s = load_scenario(DP_FEDAVG, over)
    mech = build_privacy(s)
    _drive(mech, 20, tuple(range(50)))
    g = E.GaussianDpEvent(1.0)
    forced = E.ComposedDpEvent(
        [E.SelfComposedDpEvent(g, 5), E.SelfComposedDpEvent(E.PoissonSampledDpEvent(0.25, g), 15)]
    )
    eps = mech.ledger.epsilons()
    assert eps["aggregate"] == pytest.approx(_pld(E.PoissonSampledDpEvent(0.25, g), 20), rel=1e-9)
    assert eps["forced_target"] == pytest.approx(_pld(forced, 1), rel=1e-9)
    assert eps["forced_target"] > 1.5 * eps["aggregate"]
    assert math.isinf(eps["update_in_clear"])
    assert mech.summary()["epsilon"] == math.inf and mech.summary()["epsilon_view"] == "update_in_clear"


def test_settings_that_void_the_guarantee_are_refused_at_load() -> None:
    """Row 5 and the review's list: each one clear error naming the field and the fix."""
    cases = {
        "model.warm_start.rounds": ["model.warm_start={rounds=2}"],
        "privacy.client.adaptive_clipping": ["privacy.client.noise='local'"],
        "federation.min_replies": ["federation.min_replies=3"],
    }
    for field, over in cases.items():
        with pytest.raises(ScenarioError, match=field.replace(".", r"\.")):
            load_scenario(DP_FEDAVG, over)
    with pytest.raises(ScenarioError, match=r"privacy\.level.*leakage experiment"):  # it would report no ε
        load_scenario(ROOT / "scenarios" / "leakage_dlg.toml", ["privacy={level='client'}"])
    with pytest.raises(ScenarioError, match=r"privacy\.record\.poisson_sampling"):
        load_scenario(ROOT / "scenarios" / "dp_sgd.toml", ["privacy.record.poisson_sampling=false"])
    with pytest.raises(ScenarioError, match=r"privacy\.on_budget"):
        load_scenario(
            DP_FEDAVG,
            [
                "privacy.target_epsilon=8.0",
                "privacy.on_budget='calibrate'",
                "privacy.client={clip_norm=1.0, noise_multiplier=1.0, noise='local'}",
            ],
        )


def test_noise_cannot_be_regenerated_from_public_values() -> None:
    """Two mechanisms built from the same scenario (same seed, round, ids) draw different central noise unless
    the scenario names privacy.noise_seed."""
    s = load_scenario(DP_FEDAVG)
    a, b = build_privacy(s, secret=None), build_privacy(s, secret=None)
    ctx = _ctx(1, (0, 1))
    na = a.server_aggregate(torch.zeros(D), [{"dp-clip-bit": 0.5}] * 2, ctx)
    nb = b.server_aggregate(torch.zeros(D), [{"dp-clip-bit": 0.5}] * 2, ctx)
    assert not torch.equal(na, nb)
    c, d = build_privacy(s, secret=7), build_privacy(s, secret=7)
    assert torch.equal(
        c.server_aggregate(torch.zeros(D), [{}] * 2, ctx), d.server_aggregate(torch.zeros(D), [{}] * 2, ctx)
    )


# ---- every shipped DP scenario: ε recomputed from summary.json's ledger with dp-accounting alone ----
def _decode(d: dict[str, Any]) -> E.DpEvent:
    """A DpEvent from the ledger's JSON, with nothing but dp_accounting (getattr by class name)."""
    kwargs = {}
    for k, v in d.items():
        if k == "class_name":
            continue
        if isinstance(v, dict):
            v = _decode(v)
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            v = [_decode(x) for x in v]
        kwargs[k] = v
    return getattr(E, d["class_name"])(**kwargs)


def _recompute(view: dict[str, Any], delta: float) -> float:
    events = [E.SelfComposedDpEvent(_decode(g["event"]), g["count"]) for g in view["events"]]
    rel = NR[view["dp_accounting_relation"].upper()]
    acc = RdpAccountant(neighboring_relation=rel) if view["accountant"] == "rdp" else PLDAccountant(rel)
    acc.compose(E.ComposedDpEvent(events))
    return float(acc.get_epsilon(delta))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, overrides",
    [
        ("dp_fedavg.toml", ["federation.rounds=3"]),
        (
            "dp_sgd.toml",
            [
                "federation.rounds=2",
                "data.num_clients=4",
                "federation.clients_per_round=2",
                "data.max_examples=400",
                "model.name='mlp'",
                "model.params={hidden=[16]}",
            ],
        ),
        (
            "sketch_dp.toml",
            [
                "federation.rounds=2",
                "data.max_examples=400",
                "model.name='mlp'",
                "model.params={hidden=[16]}",
            ],
        ),
    ],
)
def test_shipped_dp_scenarios_epsilon_recomputes_from_their_own_ledger(
    name: str, overrides: list[str]
) -> None:
    s = load_scenario(ROOT / "scenarios" / name, ["simulation.engine='inline'", *overrides])
    r = run(s, write=False)
    priv = r.privacy
    led = priv["ledger"]
    worst = 0.0
    for vname, view in led["views"].items():
        eps = _recompute(view, led["delta"])
        if (
            view["accountant"] == "gaussian"
        ):  # exact closed form; dp-accounting's PLD is pessimistic by ≤ 0.1 %
            assert view["epsilon"] <= eps * (1 + 1e-9) and eps == pytest.approx(view["epsilon"], rel=1e-3), (
                vname
            )
            eps = view["epsilon"]
        assert eps == pytest.approx(view["epsilon"], rel=1e-6), vname
        key = f"epsilon_{vname}" if f"epsilon_{vname}" in r.rounds[-1].privacy else "epsilon"
        assert r.rounds[-1].privacy[key] == pytest.approx(eps, rel=1e-6)
        worst = max(worst, eps)
    assert priv["epsilon"] == pytest.approx(worst, rel=1e-6)
    assert r.rounds[-1].privacy["epsilon"] == pytest.approx(worst, rel=1e-6)
