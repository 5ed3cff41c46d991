"""Client-level DP (DP-FedAvg): update clipping, Gaussian noise on the sum, adaptive clipping.

DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR 2018) with a fixed denominator: the server releases

    Δ̃ = (Σ_{i ∈ cohort} clip(Δ_i, C) + N(0, (z·C)² I)) / m,        m = q·N (the *expected* cohort size),

so one client changes the noisy sum by at most ``C`` and the noise on the average has std ``z·C/m``.

Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive
Clipping", NeurIPS 2021), as TF Privacy's quantile estimator runs it: each client sends the *shifted* bit
``s_i = 1[‖Δ_i‖ ≤ C] − ½ ∈ {−½, +½}``; the server forms the noisy fraction
``b̄ = (Σ s_i + N(0, σ_b²)) / m + ½`` and updates ``C ← C · exp(−η_C (b̄ − γ))`` (geometric update). Adding or
removing a client moves ``Σ s_i`` by ½ (an unshifted bit in {0, 1} would move it by 1 and double the count's
privacy cost); by their Theorem 1 the pair (sum, count) is then as private as a single Gaussian with
multiplier ``z`` when the update noise uses ``z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "AdaptiveClipState",
    "clip_update",
    "local_noise_std",
    "noisy_sum_average",
    "update_noise_multiplier",
]


def clip_update(delta: torch.Tensor, clip_norm: float) -> tuple[torch.Tensor, float]:
    """``Δ · min(1, C/‖Δ‖)`` and the norm before clipping.

    >>> v, n = clip_update(torch.tensor([3.0, 4.0]), 1.0)
    >>> [round(float(a), 3) for a in v], n
    ([0.6, 0.8], 5.0)
    """
    norm = float(torch.linalg.vector_norm(delta.to(torch.float64)))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return (delta * scale).to(delta.dtype), norm


def update_noise_multiplier(z: float, count_stddev: float | None) -> float:
    """Noise multiplier for the update so that (update, clipped count) together cost ``z``
    (Andrew et al. Thm 1).

    >>> round(update_noise_multiplier(1.0, 1.0), 4)
    1.1547
    """
    if count_stddev is None or z == 0:
        return z
    inv = z**-2 - (2.0 * count_stddev) ** -2
    if inv <= 0:
        raise ValueError(f"clipped_count_stddev={count_stddev} must exceed noise_multiplier/2 = {z / 2}")
    return 1.0 / math.sqrt(inv)


@dataclass
class AdaptiveClipState:
    """The server's clip norm and its geometric update toward the target quantile."""

    clip_norm: float
    target_quantile: float
    lr: float
    count_stddev: float

    def update(self, bits: list[float], *, expected_clients: float, generator: torch.Generator) -> float:
        """Apply one geometric step from the clients' shifted bits (``±½``); returns the noisy fraction ``b̄``.

        >>> st = AdaptiveClipState(clip_norm=1.0, target_quantile=0.5, lr=0.2, count_stddev=1e-12)
        >>> round(st.update([0.5, 0.5, -0.5, 0.5], expected_clients=4, generator=torch.Generator()), 6)
        0.75
        """
        if any(abs(abs(b) - 0.5) > 1e-12 for b in bits):
            raise ValueError("clip bits must be shifted to ±½ (sensitivity ½)")
        noise = float(torch.normal(0.0, self.count_stddev, (1,), generator=generator, dtype=torch.float64))
        frac = (float(sum(bits)) + noise) / expected_clients + 0.5
        self.clip_norm = self.clip_norm * math.exp(-self.lr * (frac - self.target_quantile))
        return frac


def noisy_sum_average(
    mean: torch.Tensor,
    *,
    num_received: int,
    noise_std: float,
    expected_clients: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """``(num_received · mean + N(0, noise_std² I)) / expected_clients``.

    ``mean`` is the uniform mean of the received clipped updates, so ``num_received · mean`` is their sum.
    """
    total = mean.to(torch.float64) * num_received
    if noise_std > 0:
        total = total + torch.normal(0.0, noise_std, total.shape, generator=generator, dtype=torch.float64)
    return (total / expected_clients).to(mean.dtype)


def local_noise_std(z: float, clip_norm: float, expected_clients: float) -> float:
    """Per-client std of the ``local`` variant: ``z·C/√m``, so ``m`` clients' noise sums to
    ``N(0, (zC)²)``."""
    return z * clip_norm / math.sqrt(expected_clients)
