"""Contract of every registered aggregator: shape, finiteness, accepted ⊆ ids, determinism, the
all-identical no-op, and permutation invariance (hypothesis).

Exceptions, by design: FLAME (noise λ·S) and norm clipping (noise σ) are built with noise 0 for the
no-op check, and the identical update is kept inside the clipping bound; FoolsGold sees identical
updates as sybils of each other and returns the zero update (checked as such).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import defenses  # noqa: F401  (registers every aggregator)
from defenses.base import AGGREGATORS, Aggregator
from simulator.context import RoundContext
from simulator.flat import Layout

NAMES = AGGREGATORS.names()
NO_NOISE: dict[str, dict[str, Any]] = {"flame": {"noise_lambda": 0.0}, "norm_clipping": {"noise_std": 0.0}}
WITH_NOISE: dict[str, dict[str, Any]] = {
    "flame": {"noise_lambda": 0.01},
    "norm_clipping": {"noise_std": 0.01},
}


def make_ctx(ids: list[int], d: int, *, seed: int = 3, root: torch.Tensor | None = None) -> RoundContext:
    return RoundContext(
        server_round=2,
        seed=seed,
        global_vector=torch.linspace(-1, 1, d),
        layout=Layout(("w",), ((d,),)),
        client_ids=tuple(ids),
        num_examples=tuple(10 + (i % 7) for i in ids),
        num_clients=500,
        expected_clients_per_round=float(len(ids)),
        root_update=root,
    )


def root_for(name: str, updates: torch.Tensor) -> torch.Tensor | None:
    """The server's root update for a rule that needs one (FLTrust): here the mean of the round's updates."""
    return updates.mean(dim=0) if AGGREGATORS.get(name).factory.needs_root_update else None


def build(name: str, params: dict[str, dict[str, Any]] | None = None) -> Aggregator:
    return AGGREGATORS.create(name, (params or {}).get(name, {}))


def test_expected_rules_are_registered() -> None:
    assert {
        "fedavg",
        "multi_metrics",
        "krum",
        "multi_krum",
        "median",
        "trimmed_mean",
        "bulyan",
        "rfa",
        "norm_clipping",
        "flame",
        "foolsgold",
        "rlr",
    } <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_contract(name: str) -> None:
    n, d = 12, 64
    g = torch.Generator().manual_seed(0)
    updates = torch.randn(n, d, generator=g) * 0.1
    weights = torch.randint(1, 30, (n,), generator=g).to(torch.float32)
    ids = [5 * i + 1 for i in range(n)]
    ctx = make_ctx(ids, d, root=root_for(name, updates))
    a = build(name, WITH_NOISE).aggregate(updates, weights, ctx)
    b = build(name, WITH_NOISE).aggregate(updates.clone(), weights.clone(), ctx)
    assert a.update.shape == (d,) and a.update.dtype == updates.dtype
    assert bool(torch.isfinite(a.update).all())
    assert set(a.accepted) <= set(ids) and len(set(a.accepted)) == len(a.accepted)
    assert set(a.scores) == set(ids) and all(isinstance(s, float) for s in a.scores.values())
    assert torch.equal(a.update, b.update) and a.accepted == b.accepted and a.scores == b.scores


@pytest.mark.parametrize("name", NAMES)
def test_identical_updates_are_a_fixed_point(name: str) -> None:
    n, d = 12, 64
    one = torch.linspace(-0.2, 0.3, d)  # norm ≈ 1.2: inside norm clipping's default bound 3
    updates = one.repeat(n, 1)
    ctx = make_ctx(list(range(n)), d, root=root_for(name, updates))
    res = build(name, NO_NOISE).aggregate(updates, torch.arange(1.0, n + 1), ctx)
    if name == "foolsgold":
        assert torch.equal(res.update, torch.zeros(d)) and res.accepted == ()
    else:
        torch.testing.assert_close(res.update, one, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=12, deadline=None, derandomize=True)
@given(data=st.data())
def test_permutation_invariance(name: str, data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=7, max_value=12), label="n")
    d = data.draw(st.integers(min_value=4, max_value=40), label="d")
    seed = data.draw(st.integers(min_value=0, max_value=2**31 - 1), label="seed")
    perm = data.draw(st.permutations(list(range(n))), label="perm")
    g = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g).add(0.2)
    weights = torch.randint(1, 30, (n,), generator=g).to(torch.float32)
    ids = torch.randperm(1000, generator=g)[:n].tolist()
    root = root_for(name, updates)
    res = build(name, WITH_NOISE).aggregate(updates, weights, make_ctx(ids, d, root=root))
    p = torch.tensor(perm)
    res_p = build(name, WITH_NOISE).aggregate(
        updates[p], weights[p], make_ctx([ids[i] for i in perm], d, root=root)
    )
    # float summation order changes with the permutation: allow float32 rounding
    torch.testing.assert_close(res_p.update, res.update, atol=1e-5, rtol=1e-4)
    assert set(res_p.accepted) == set(res.accepted)


@pytest.mark.parametrize("name", NAMES)
def test_a_rule_that_runs_behind_secure_aggregation_reads_only_the_weighted_sum(name: str) -> None:
    """``needs_individual_updates = False`` is a claim: two update matrices with the same weighted mean give
    the same aggregate. A rule that does read rows keeps the flag True (refused with secure aggregation)."""
    agg = build(name, NO_NOISE)
    if agg.needs_individual_updates:
        return
    n, d = 6, 32
    g = torch.Generator().manual_seed(1)
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.arange(1, n + 1, dtype=torch.float64)
    shuffle = torch.randn(n, d, generator=g, dtype=torch.float64)
    shuffle -= w @ shuffle / w.sum()  # zero weighted mean: u + shuffle has u's weighted mean
    ctx = make_ctx(list(range(n)), d)
    a = agg.aggregate(u, w, ctx).update
    b = agg.aggregate(u + shuffle, w, ctx).update
    assert torch.allclose(a, b, atol=1e-10)
