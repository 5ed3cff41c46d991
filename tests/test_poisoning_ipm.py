"""IPM (Xie, Koyejo, Gupta, 2019): inner products against their closed forms. Tolerances are stated
per assertion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.poisoning import ipm_updates


def _benign(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5  # a clear mean direction


@pytest.mark.parametrize("eps", [0.1, 1.0, 100.0])
def test_malicious_update_has_negative_inner_product_with_the_mean(eps: float) -> None:
    b = _benign(10, 50, 0)
    mu = b.numpy().mean(axis=0)
    out = ipm_updates(b, num_malicious=3, epsilon=eps)
    assert out.shape == (3, 50)
    for row in out.numpy():
        ip = float(row @ mu)
        # closed form −ε‖μ‖², relative 1e-12 (float64)
        assert ip == pytest.approx(-eps * float(mu @ mu), rel=1e-12)
        assert ip < 0


@pytest.mark.parametrize(("n_b", "f"), [(12, 4), (20, 5), (9, 9)])
def test_mean_of_all_updates_turns_against_the_benign_mean_iff_eps_exceeds_nb_over_f(
    n_b: int, f: int
) -> None:
    b = _benign(n_b, 30, 1)
    mu = b.numpy().mean(axis=0)
    threshold = n_b / f
    for eps, sign in [(threshold * 1.02, -1.0), (threshold * 0.98, 1.0)]:
        allu = torch.cat([ipm_updates(b, num_malicious=f, epsilon=eps), b]).numpy()
        agg = allu.mean(axis=0)
        # closed form: mean = (n_b − f ε)/(n_b + f) · μ (absolute 1e-12)
        np.testing.assert_allclose(agg, (n_b - f * eps) / (n_b + f) * mu, rtol=0, atol=1e-12)
        assert np.sign(agg @ mu) == sign


def test_zero_epsilon_sends_zero() -> None:
    out = ipm_updates(_benign(4, 6, 2), num_malicious=2, epsilon=0.0)
    assert torch.equal(out.abs(), torch.zeros(2, 6, dtype=torch.float64))
