"""Norm clipping with optional weak differential privacy (Sun, Kairouz, Suresh, McMahan, 2019,
"Can You Really Backdoor Federated Learning?")."""

from __future__ import annotations

import torch

from defenses.aggregation._linalg import row_norms, weighted_sum
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext

__all__ = ["NormClipping", "clip_factors", "gaussian_noise"]


def clip_factors(norms: torch.Tensor, max_norm: float) -> torch.Tensor:
    """``min(1, M / ‖u_i‖)``: the factor that brings each update inside the L2 ball of radius M.

    >>> clip_factors(torch.tensor([0.5, 2.0, 0.0]), 1.0).tolist()
    [1.0, 0.5, 1.0]
    """
    return torch.where(norms > max_norm, max_norm / norms.clamp_min(1e-300), torch.ones_like(norms))


def gaussian_noise(d: int, std: float, *, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """``N(0, std²)`` noise of length ``d`` drawn on the CPU from ``generator`` (so that CPU and GPU
    runs add the same noise), moved to ``like``'s device and dtype."""
    noise = torch.randn(d, generator=generator, dtype=torch.float32) * std
    return noise.to(device=like.device, dtype=like.dtype)


@AGGREGATORS.register("norm_clipping")
class NormClipping(Aggregator):
    """Norm clipping + weak DP (Sun et al., 2019): clip each update to ``‖Δ_i‖ ≤ M``, take the
    example-weighted mean, then add ``N(0, σ²)`` per coordinate (σ = 0: no noise).

    Every client is ``accepted``. Score = ``‖Δ_i‖ / M`` (higher = more suspicious; > 1 means the
    update was clipped). Noise comes from ``ctx.generator("norm_clipping")``.

    Parameters
    ----------
    max_norm : float
        The clipping bound M (OOD_FL / Multi-metrics use 2, FLPoison 3, BackFed 5).
    noise_std : float
        σ of the Gaussian noise added to the aggregate (weak DP; e.g. 0.025 in OOD_FL, 0.002 in
        FLPoison).
    """

    selects_clients = False  # clips every client, rejects none: no detection rates

    def __init__(self, max_norm: float = 3.0, noise_std: float = 0.0) -> None:
        if max_norm <= 0 or noise_std < 0:
            raise ValueError("need max_norm > 0 and noise_std >= 0")
        self.max_norm, self.noise_std = max_norm, noise_std

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        norms = row_norms(updates)
        factors = clip_factors(norms, self.max_norm)
        w = weights.to(device=updates.device, dtype=torch.float64)
        update = weighted_sum(updates, w * factors / w.sum())  # Σ w_i f_i u_i / Σ w_i
        if self.noise_std > 0:
            update = update + gaussian_noise(
                update.numel(), self.noise_std, generator=ctx.generator("norm_clipping"), like=update
            )
        scores = (norms / self.max_norm).tolist()
        return AggregationResult(update, tuple(ctx.client_ids), dict(zip(ctx.client_ids, scores)))
