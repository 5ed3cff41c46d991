"""Input perturbation: Gaussian noise on each client's features once, then ordinary (non-private) training.

Following the input-vs-gradient comparison of Arcolezi et al., "Differentially Private Multivariate Time
Series Forecasting of Aggregated Human Mobility With Deep Learning: Input or Gradient Perturbation?"
(Neural Computing and Applications, 2022): the input variant privatises the data once, and everything
trained on it is post-processing.

Guarantee (what the reported ε means): each example's feature vector is clipped to ``‖x‖₂ ≤ B`` and
released as ``x + N(0, (z·2B)² I)``. Two datasets are neighbours when they differ in *the features of one
example* (replace-one, ``‖x − x'‖ ≤ 2B``), so the release is one Gaussian mechanism with noise multiplier
``z`` and ε(δ) is that of ``GaussianDpEvent(z)`` (PLD). Labels are released unperturbed, so they are not
protected: this is feature-level DP, weaker than DP-SGD's record-level DP. The noise is drawn once per
client from a round-independent seed, so repeated rounds re-use the same noisy copy and ε does not grow.
"""

from __future__ import annotations

import torch

from simulator.dp.accounting import epsilon_pld
from simulator.dp.dpa import E

__all__ = ["clip_rows", "input_perturbation_epsilon", "perturb_inputs"]


def clip_rows(x: torch.Tensor, bound: float) -> torch.Tensor:
    """Each example (row of the flattened ``x``) scaled to norm ≤ ``bound``; same shape as ``x``."""
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    norms = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
    scale = torch.clamp(bound / norms.clamp_min(1e-12), max=1.0)
    return (flat * scale).to(x.dtype).reshape(x.shape)


def perturb_inputs(
    x: torch.Tensor, *, bound: float, noise_multiplier: float, generator: torch.Generator
) -> torch.Tensor:
    """``clip(x, B) + N(0, (z·2B)²)`` elementwise."""
    std = noise_multiplier * 2.0 * bound
    noise = torch.normal(0.0, std, x.shape, generator=generator, dtype=torch.float64).to(x.dtype)
    return clip_rows(x, bound) + noise


def input_perturbation_epsilon(noise_multiplier: float, delta: float) -> float:
    """ε(δ) of one Gaussian release with multiplier ``z`` (feature-level, replace-one)."""
    return epsilon_pld(E.GaussianDpEvent(noise_multiplier), 1, delta)
