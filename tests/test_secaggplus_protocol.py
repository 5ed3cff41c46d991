"""Flower's real SecAgg+ protocol (simulator.flower.secaggplus) against its simulated numerics (secagg).

Masks, key agreement and Shamir shares are Flower's own and random (os.urandom) in every run; they cancel, so
the aggregate depends on the updates and the stochastic-rounding draws only.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from simulator.flower.secaggplus import SecAggPlusAborted, run_secaggplus
from simulator.secagg import SecAggParams, error_bound, simulate

COUNTS = [10, 25, 40, 7, 100]
PARAMS = SecAggParams(max_weight=100.0)  # the largest count: no clipping of the weighted values, fine steps
D = 200


def _updates(seed: int, n: int = 5, d: int = D) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 0.05  # float32, like a torch model's delta


def _weighted_mean(updates: torch.Tensor, counts: list[int]) -> torch.Tensor:
    w = torch.tensor(counts, dtype=torch.float64)
    return (w @ updates.double()) / w.sum()


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _align_draws(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Flower's stochastic rounding draws np.random.rand(d) once per client; make it simulate()'s draws."""
    g = torch.Generator().manual_seed(seed)
    monkeypatch.setattr(
        np.random, "rand", lambda *shape: torch.rand(shape, generator=g, dtype=torch.float64).numpy()
    )


# (1) no dropout: the protocol's aggregate is the simulation's, up to the rounding draws ---------------------


def test_protocol_matches_simulation_within_the_quantisation_bound():
    updates = _updates(0)
    np_state, py_state = np.random.get_state(), random.getstate()
    res = run_secaggplus(updates, COUNTS, params=PARAMS, num_shares=5, reconstruction_threshold=3, seed=7)
    sim = simulate(updates, COUNTS, PARAMS, generator=torch.Generator().manual_seed(7))
    exact = _weighted_mean(updates, COUNTS)

    assert res.aggregate.dtype == torch.float64 and res.aggregate.shape == (D,)
    assert res.survivors == (0, 1, 2, 3, 4) and res.dropped == ()
    assert res.num_examples == tuple(COUNTS)  # in the clear on Flower's legacy path
    assert res.num_failures == 0
    assert set(res.stage_seconds) == {"setup", "share_keys", "collect_masked_vectors", "unmask"}
    assert res.total_seconds >= sum(res.stage_seconds.values()) > 0

    bound = sim.max_abs_error_bound
    assert _max_abs(res.aggregate, exact) <= bound
    assert _max_abs(sim.aggregate, exact) <= bound
    # both round every value to one of the same two neighbouring levels: they differ by < 1 step per client
    assert _max_abs(res.aggregate, sim.aggregate) <= error_bound(COUNTS, PARAMS)
    assert _max_abs(res.aggregate, exact) > 0.1 * error_bound(COUNTS, PARAMS)  # it did quantise

    # reproducible from `seed` (fresh keys and masks every run), and the global RNGs are put back
    again = run_secaggplus(updates, COUNTS, params=PARAMS, num_shares=5, reconstruction_threshold=3, seed=7)
    assert torch.equal(again.aggregate, res.aggregate)
    after_np = np.random.get_state()
    assert (
        after_np[0] == np_state[0]
        and np.array_equal(after_np[1], np_state[1])
        and after_np[2:] == np_state[2:]
    )
    assert random.getstate() == py_state


def test_protocol_equals_simulation_bit_for_bit_with_the_same_draws(monkeypatch):
    updates = _updates(1)
    _align_draws(monkeypatch, seed=3)
    res = run_secaggplus(updates, COUNTS, params=PARAMS, num_shares=5, reconstruction_threshold=3)
    sim = simulate(updates, COUNTS, PARAMS, generator=torch.Generator().manual_seed(3))
    assert torch.equal(res.aggregate, sim.aggregate)


# (2) one client drops after sharing keys: the survivors' sum is recovered ---------------------------------


def test_dropout_after_share_keys_recovers_the_survivors_mean(monkeypatch):
    updates = _updates(2)
    updates[2] += 1.0  # the dropped client's update is far from the others'
    survivors = [0, 1, 3, 4]
    counts = [COUNTS[i] for i in survivors]
    res = run_secaggplus(
        updates,
        COUNTS,
        params=PARAMS,
        num_shares=5,
        reconstruction_threshold=3,
        drop_after_share_keys=[2],
        seed=11,
    )
    assert res.survivors == tuple(survivors)
    assert 2 not in res.survivors and res.dropped == (2,)
    assert res.num_examples == tuple(counts)
    assert res.num_failures == 2  # Flower 1.41 appends the one failed reply twice

    sim = simulate(updates[survivors], counts, PARAMS, generator=torch.Generator().manual_seed(11))
    exact = _weighted_mean(updates[survivors], counts)
    assert _max_abs(res.aggregate, exact) <= sim.max_abs_error_bound
    assert _max_abs(res.aggregate, sim.aggregate) <= error_bound(counts, PARAMS)
    assert _max_abs(res.aggregate, _weighted_mean(updates, COUNTS)) > 0.05  # client 2 is not in it

    # with the simulation's draws, the recovered sum is exactly the simulated survivors' aggregate
    _align_draws(monkeypatch, seed=5)
    aligned = run_secaggplus(
        updates, COUNTS, params=PARAMS, num_shares=5, reconstruction_threshold=3, drop_after_share_keys=[2]
    )
    sim = simulate(updates[survivors], counts, PARAMS, generator=torch.Generator().manual_seed(5))
    assert torch.equal(aligned.aggregate, sim.aggregate)


# (3) fewer survivors than the reconstruction threshold: Flower halts, no aggregate ------------------------


@pytest.mark.parametrize(("threshold", "dropped"), [(3, [0, 1, 2]), (4, [1, 3])])
def test_too_few_survivors_for_the_threshold_aborts(threshold, dropped):
    with pytest.raises(SecAggPlusAborted, match="halted at stage 'collect_masked_vectors'"):
        run_secaggplus(
            _updates(3),
            COUNTS,
            params=PARAMS,
            num_shares=5,
            reconstruction_threshold=threshold,
            drop_after_share_keys=dropped,
        )


def test_input_checks():
    with pytest.raises(ValueError, match="example counts"):
        run_secaggplus(_updates(0), COUNTS[:4], params=PARAMS, num_shares=5, reconstruction_threshold=3)
    with pytest.raises(ValueError, match="drop_after_share_keys"):
        run_secaggplus(
            _updates(0),
            COUNTS,
            params=PARAMS,
            num_shares=5,
            reconstruction_threshold=3,
            drop_after_share_keys=[5],
        )
    with pytest.raises(ValueError, match="reconstruction_threshold"):  # Flower's own check
        run_secaggplus(_updates(0), COUNTS, params=PARAMS, num_shares=5, reconstruction_threshold=5)
