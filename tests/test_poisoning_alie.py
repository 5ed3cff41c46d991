"""ALIE (Baruch et al., NeurIPS 2019): ``z_max`` against scipy's normal quantile and the malicious
update against a numpy computation of ``μ − z·σ``. Tolerances are stated per assertion."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import norm

from attacks.poisoning import alie_updates, alie_z_max


@pytest.mark.parametrize(
    ("n", "f"), [(50, 10), (50, 12), (50, 24), (20, 5), (10, 1), (100, 20), (7, 3), (30, 1)]
)
def test_z_max_matches_the_closed_form(n: int, f: int) -> None:
    s = n // 2 + 1 - f  # ⌊n/2 + 1⌋ for an integer n
    assert alie_z_max(num_clients=n, num_malicious=f) == pytest.approx(norm.ppf((n - s) / n), abs=1e-9)


def test_z_max_reference_values() -> None:
    # n = 50, f = 10: s = 16, Φ⁻¹(34/50) = 0.4677 (the formula does not give ≈ 1.0 here)
    assert alie_z_max(num_clients=50, num_malicious=10) == pytest.approx(0.467698799, abs=1e-6)
    assert alie_z_max(num_clients=10, num_malicious=1) == pytest.approx(0.0, abs=1e-12)  # s = 5: Φ⁻¹(1/2)
    assert alie_z_max(num_clients=7, num_malicious=3) == pytest.approx(
        1.067570523, abs=1e-6
    )  # s = 1: Φ⁻¹(6/7)
    # z_max grows with f for a fixed n
    zs = [alie_z_max(num_clients=50, num_malicious=f) for f in range(1, 26)]
    assert all(a < b for a, b in itertools.pairwise(zs))


@pytest.mark.parametrize(("n", "f"), [(10, 6), (10, 10), (3, 2)])
def test_z_max_rejects_attacker_majorities(n: int, f: int) -> None:
    with pytest.raises(ValueError, match="pass z explicitly"):
        alie_z_max(num_clients=n, num_malicious=f)


def test_alie_updates_are_mean_minus_z_std() -> None:
    b = torch.randn(12, 40, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.1
    arr = b.double().numpy()
    mu, sd = arr.mean(axis=0), arr.std(axis=0, ddof=1)
    out = alie_updates(b, num_malicious=4)
    z = norm.ppf((16 - (16 // 2 + 1 - 4)) / 16)  # n = n_b + f = 16
    assert out.shape == (4, 40) and out.dtype == b.dtype
    np.testing.assert_allclose(out.double().numpy(), np.tile(mu - z * sd, (4, 1)), rtol=0, atol=1e-6)
    out_n = alie_updates(b, num_malicious=4, num_clients=50)  # partial knowledge: the true round size
    z50 = alie_z_max(num_clients=50, num_malicious=4)
    np.testing.assert_allclose(out_n[0].double().numpy(), mu - z50 * sd, rtol=0, atol=1e-6)
    out_z = alie_updates(b, num_malicious=2, z=-1.5)
    np.testing.assert_allclose(out_z.double().numpy(), np.tile(mu + 1.5 * sd, (2, 1)), rtol=0, atol=1e-6)


def test_alie_stays_inside_the_benign_range() -> None:
    """With z_max ≈ 0.5 (n = 50, f = 10) every coordinate lies between the benign extremes (40 normal
    benign values per coordinate, fixed seed)."""
    b = torch.randn(40, 200, generator=torch.Generator().manual_seed(1))
    out = alie_updates(b, num_malicious=10)
    assert bool(((out[0] > b.amin(0)) & (out[0] < b.amax(0))).all())


def test_alie_needs_two_rows() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        alie_updates(torch.zeros(1, 3), num_malicious=1)
