"""Krum, Multi-Krum, median, trimmed mean and Bulyan against Flower's own functions.

Flower's references are called on float64 numpy copies of the same float32 updates; aggregates must
agree to ``atol=1e-6`` (float32 outputs of O(1) values), selections exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.server.strategy.aggregate import aggregate_bulyan, aggregate_krum, aggregate_median
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum as flwr_select_multikrum
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from defenses.aggregation.bulyan import Bulyan
from defenses.aggregation.krum import Krum, MultiKrum
from defenses.aggregation.median import Median
from defenses.aggregation.trimmed_mean import TrimmedMean, trim_count
from simulator.context import RoundContext
from simulator.flat import Layout

ATOL = 1e-6


def make_ctx(n: int, d: int, *, seed: int = 0, ids: list[int] | None = None) -> RoundContext:
    ids = ids if ids is not None else [100 + 3 * i for i in range(n)]
    return RoundContext(
        server_round=1,
        seed=seed,
        global_vector=torch.zeros(d),
        layout=Layout(("w",), ((d,),)),
        client_ids=tuple(ids),
        num_examples=tuple(10 + i for i in range(n)),
        num_clients=1000,
        expected_clients_per_round=float(n),
    )


def random_round(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g).add(0.5)
    weights = torch.randint(5, 50, (n,), generator=g).to(torch.float32)
    return updates, weights


def contents(updates: torch.Tensor, weights: torch.Tensor) -> list[RecordDict]:
    return [
        RecordDict(
            {
                "arrays": ArrayRecord([u.numpy().astype(np.float64)]),
                "metrics": MetricRecord({"num-examples": float(w)}),
            }
        )
        for u, w in zip(updates, weights)
    ]


@pytest.mark.parametrize(
    ("n", "f", "m", "seed"), [(10, 1, 1, 0), (10, 2, 5, 1), (15, 3, 7, 2), (6, 1, 6, 3), (4, 2, 2, 4)]
)
def test_multikrum_matches_flower(n: int, f: int, m: int, seed: int) -> None:
    updates, weights = random_round(n, 257, seed)
    recs = contents(updates, weights)
    chosen = flwr_select_multikrum(recs, num_malicious_nodes=f, num_nodes_to_select=m)
    expected = aggregate_arrayrecords(chosen, "num-examples").to_numpy_ndarrays()[0]
    ctx = make_ctx(n, 257)
    agg = MultiKrum(num_malicious=f, num_selected=m) if m > 1 else Krum(num_malicious=f)
    res = agg.aggregate(updates, weights, ctx)
    chosen_rows = sorted(next(i for i, r in enumerate(recs) if r is c) for c in chosen)
    assert sorted(ctx.client_ids.index(c) for c in res.accepted) == chosen_rows
    np.testing.assert_allclose(res.update.numpy(), expected, atol=ATOL)


def test_krum_matches_flower_legacy_function() -> None:
    updates, weights = random_round(9, 100, 7)
    results = [([u.numpy().astype(np.float64)], int(w)) for u, w in zip(updates, weights)]
    expected = aggregate_krum(results, num_malicious=2, to_keep=0)[0]
    res = Krum(num_malicious=2).aggregate(updates, weights, make_ctx(9, 100))
    np.testing.assert_allclose(res.update.numpy(), expected, atol=ATOL)
    assert len(res.accepted) == 1


@pytest.mark.parametrize("n", [1, 2, 7, 10])
def test_median_matches_flower(n: int) -> None:
    updates, weights = random_round(n, 301, n)
    expected = aggregate_median([([u.numpy().astype(np.float64)], 1) for u in updates])[0]
    res = Median().aggregate(updates, weights, make_ctx(n, 301))
    np.testing.assert_allclose(res.update.numpy(), expected, atol=ATOL)
    assert set(res.accepted) == set(make_ctx(n, 301).client_ids)


@pytest.mark.parametrize(("n", "beta"), [(10, 0.2), (10, 0.1), (9, 0.2), (7, 0.45), (5, 0.0), (12, 0.25)])
def test_trimmed_mean_matches_flower(n: int, beta: float) -> None:
    updates, weights = random_round(n, 211, 11 * n)
    expected = trim_mean(updates.numpy().astype(np.float64), beta)
    res = TrimmedMean(beta=beta).aggregate(updates, weights, make_ctx(n, 211))
    np.testing.assert_allclose(res.update.numpy(), expected, atol=ATOL)
    # Flower's rounding of the trim count: int(beta * n) per side
    assert trim_count(n, beta) == int(beta * n)


def test_trimmed_mean_rejects_beta_out_of_range() -> None:
    with pytest.raises(ValueError):
        TrimmedMean(beta=0.5)


@pytest.mark.parametrize(("n", "f", "seed"), [(7, 1, 0), (11, 2, 1), (12, 2, 2)])
def test_bulyan_iterative_matches_flower_legacy(n: int, f: int, seed: int) -> None:
    updates, weights = random_round(n, 150, seed)
    results = [([u.numpy().astype(np.float64)], int(w)) for u, w in zip(updates, weights)]
    expected = aggregate_bulyan(results, num_malicious=f, aggregation_rule=aggregate_krum, to_keep=0)[0]
    res = Bulyan(num_malicious=f, selection="iterative_krum").aggregate(updates, weights, make_ctx(n, 150))
    np.testing.assert_allclose(res.update.numpy(), expected, atol=ATOL)
    assert len(res.accepted) == n - 2 * f


@pytest.mark.parametrize(("n", "f", "seed"), [(7, 1, 3), (11, 2, 4)])
def test_bulyan_multikrum_selection_matches_flower_message_api(n: int, f: int, seed: int) -> None:
    updates, weights = random_round(n, 150, seed)
    recs = contents(updates, weights)
    theta, beta = n - 2 * f, n - 4 * f
    chosen = flwr_select_multikrum(recs, num_malicious_nodes=f, num_nodes_to_select=theta)
    layers = [c["arrays"].to_numpy_ndarrays() for c in chosen]
    median = [np.median(np.stack([x[0] for x in layers]), axis=0)]
    expected = aggregate_n_closest_weights(median, layers, beta)[0]
    res = Bulyan(num_malicious=f, selection="multi_krum").aggregate(updates, weights, make_ctx(n, 150))
    np.testing.assert_allclose(res.update.numpy(), expected, atol=ATOL)
