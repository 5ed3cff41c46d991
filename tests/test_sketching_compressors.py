"""Every registered compressor honours its spec; sketched FedAvg, DP on the sketch, sparsifiers, byte
accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.round.harness import run_round
from simulator.sketching import COMPRESSORS, communication_cost, payload_bytes
from simulator.sketching.base import ArraySpec
from simulator.sketching.testing import client_context, flat_layout, round_context

D = 500
LAYOUT = flat_layout(D)
SMALL = {
    "topk": {"k": 20},
    "randk": {"k": 20},
    "ef": {"k": 20},
    "ef21": {"k": 20},
    "econtrol": {"k": 20},
    "fetchsgd": {"rows": 3, "cols": 40, "k": 20},
}


def _deltas(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", COMPRESSORS.names())
def test_contract_spec_shapes_and_determinism(name: str) -> None:
    deltas = _deltas(3)
    outs = []
    for _ in range(2):  # two fresh instances and fresh client states: identical payloads and decodes
        comp = COMPRESSORS.create(name, SMALL.get(name, {}))
        payloads, decoded = [], []
        states: dict = {}
        for rnd in (1, 2):  # run_round checks every payload against spec (names, shapes, dtypes)
            p, dec = run_round(comp, deltas * rnd, layout=LAYOUT, server_round=rnd, states=states)
            payloads.append(p)
            decoded.append(dec)
            expected = (D,) if comp.aggregates_in_sketch_space else (3, D)
            assert tuple(dec.shape) == expected
            assert dec.dtype == torch.float32 and bool(torch.isfinite(dec).all())
        outs.append((payloads, decoded))
    (p1, d1), (p2, d2) = outs
    for a, b in zip(p1, p2):
        for x, y in zip(a, b):
            assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    for a, b in zip(d1, d2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", COMPRESSORS.names())
def test_contract_payload_smaller_than_dense_or_identity(name: str) -> None:
    cost = communication_cost(COMPRESSORS.create(name, SMALL.get(name, {})), LAYOUT)
    assert cost.dense_bytes == 4 * D
    if name == "none":
        assert cost.ratio == 1.0
    else:
        assert cost.ratio > 1.0


def test_comm_cost_numbers() -> None:
    layout = flat_layout(10_000)
    c = communication_cost(COMPRESSORS.create("topk", {"k_ratio": 0.01}), layout)
    assert (c.bytes_up, c.dense_bytes, c.ratio) == (800, 40_000, 50.0)  # 100 int32 + 100 float32
    c = communication_cost(COMPRESSORS.create("count_sketch", {"rows": 5, "ratio": 0.1}), layout)
    assert c.bytes_up == 4 * 5 * 200 and c.ratio == 10.0
    c = communication_cost(COMPRESSORS.create("srht", {"sketch_dim": 128}), layout)
    assert c.bytes_up == 512
    assert payload_bytes({"a": ArraySpec((2, 3), "float64")}) == 48


@pytest.mark.parametrize("name", ["gaussian_sketch", "srht", "count_sketch"])
def test_same_round_same_operator_for_all_clients_fresh_each_round(name: str) -> None:
    comp = COMPRESSORS.create(name, {"ratio": 0.2})
    x = _deltas(1)[0]
    y1 = comp.encode(x, client_context(LAYOUT, partition_id=0, server_round=1))["sketch"]
    y1b = COMPRESSORS.create(name, {"ratio": 0.2}).encode(
        x, client_context(LAYOUT, partition_id=7, server_round=1)
    )["sketch"]
    y2 = comp.encode(x, client_context(LAYOUT, partition_id=0, server_round=2))["sketch"]
    assert np.array_equal(y1, y1b)  # a different client, a separate instance: the same R
    assert not np.allclose(y1, y2)  # a new round: a new R
    fixed = COMPRESSORS.create(name, {"ratio": 0.2, "fresh_each_round": False})
    assert np.array_equal(
        fixed.encode(x, client_context(LAYOUT, server_round=1))["sketch"],
        fixed.encode(x, client_context(LAYOUT, server_round=5))["sketch"],
    )


@pytest.mark.parametrize("name", ["gaussian_sketch", "srht", "count_sketch"])
def test_sketch_space_average_equals_mean_of_per_client_estimates(name: str) -> None:
    deltas = _deltas(4, seed=3)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    _, per_client = run_round(COMPRESSORS.create(name, {"ratio": 0.3}), deltas, layout=LAYOUT)
    _, agg = run_round(
        COMPRESSORS.create(name, {"ratio": 0.3, "aggregate_in_sketch_space": True}),
        deltas,
        layout=LAYOUT,
        weights=w,
    )
    torch.testing.assert_close(agg, (w / w.sum()) @ per_client, atol=1e-4, rtol=1e-4)


def test_full_size_srht_is_lossless() -> None:
    # s = D = d (a power of two): R = H·Σ/√d is orthogonal, so the de-sketch is exact.
    layout = flat_layout(256)
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(0))
    _, dec = run_round(COMPRESSORS.create("srht", {"ratio": 1.0}), x, layout=layout)
    torch.testing.assert_close(dec, x, atol=1e-4, rtol=1e-4)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 100.0))
def test_dp_clips_in_both_spaces(seed: int, scale: float) -> None:
    x = torch.randn(D, generator=torch.Generator().manual_seed(seed)) * scale
    for name, gain in [("gaussian_sketch", 1.0), ("srht", 1.0), ("count_sketch", math.sqrt(5))]:
        comp = COMPRESSORS.create(name, {"ratio": 0.2, "clip_norm": 0.5})  # clipping only, no noise
        y = comp.encode(x, client_context(LAYOUT, server_round=1))["sketch"]
        assert float(np.linalg.norm(y)) <= gain * 0.5 * (1 + 1e-5)
        assert comp.privacy_params() is None


def test_dp_noise_has_the_calibrated_std_and_is_private_to_the_client() -> None:
    # ‖x‖ = 1e-4 ≪ C = 1: the sketch is ≈ pure noise of std z·g·C per entry. s = 5000 entries: the sample std
    # is within 3% of the target with probability > 0.999 (relative std 1/√(2s) = 1%).
    d = 5000
    layout = flat_layout(d)
    x = torch.full((d,), 1e-4 / math.sqrt(d))
    for name, params, gain in [
        ("srht", {"ratio": 1.0}, 1.0),
        ("count_sketch", {"rows": 5, "ratio": 1.0}, 5**0.5),
    ]:
        comp = COMPRESSORS.create(name, {**params, "clip_norm": 1.0, "noise_multiplier": 2.0})
        assert comp.privacy_params() == (2.0, 1.0)
        y0 = comp.encode(x, client_context(layout, partition_id=0))["sketch"]
        y1 = comp.encode(x, client_context(layout, partition_id=1))["sketch"]
        assert abs(float(y0.std()) / (2.0 * gain) - 1) < 0.03
        assert not np.allclose(y0, y1)  # each client draws its own noise


def test_noise_without_clip_is_refused() -> None:
    with pytest.raises(ValueError, match="clip_norm"):
        COMPRESSORS.create("srht", {"noise_multiplier": 1.0})


def test_topk_keeps_the_largest_and_randk_is_unbiased() -> None:
    x = torch.arange(D, dtype=torch.float32) - D / 2
    _, dec = run_round(COMPRESSORS.create("topk", {"k": 10}), x[None], layout=LAYOUT)
    kept = dec[0].nonzero().flatten()
    assert set(kept.tolist()) == set((x.abs().topk(10).indices).tolist())
    torch.testing.assert_close(dec[0][kept], x[kept])
    # rand-k scaled by d/k: the mean over 400 rounds (fresh indices each round) → x. Per coordinate the
    # estimate is d/k·x_i w.p. k/d: std of the mean |x_i|·√((d/k − 1)/400) ≈ 0.35·|x_i| for d/k = 50; we check
    # the norm of the error, whose expectation is ≈ 0.35‖x‖, below 0.45‖x‖.
    comp = COMPRESSORS.create("randk", {"k": 10})
    acc = torch.zeros(D)
    for rnd in range(1, 401):
        acc += run_round(comp, x[None], layout=LAYOUT, server_round=rnd)[1][0]
    assert float((acc / 400 - x).norm()) < 0.45 * float(x.norm())


def test_malformed_sparse_indices_are_dropped_not_fatal() -> None:
    comp = COMPRESSORS.create("topk", {"k": 3})
    bad = {
        "indices": torch.tensor([0, D + 5, -1], dtype=torch.int32),
        "values": torch.tensor([1.0, 2.0, 3.0]),
    }
    dec = comp.decode([bad], round_context(LAYOUT, client_ids=[0]))
    assert float(dec.sum()) == 1.0 and float(dec[0, 0]) == 1.0
