"""Additive Gaussian noise on the client's payload (the "noisy gradients" defense evaluated by
Zhu et al., "Deep Leakage from Gradients", NeurIPS 2019, Sec. 5; the local-DP perturbation of
Abadi et al. 2016 without clipping or accounting)."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from defenses.base import CLIENT_DEFENSES, ClientDefense
from simulator.context import ClientContext

__all__ = ["GaussianNoise", "add_gaussian_noise"]


def add_gaussian_noise(delta: torch.Tensor, *, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """``delta + σ·N(0, I)`` drawn from ``generator`` (``delta`` unchanged when σ = 0)."""
    if sigma == 0:
        return delta.clone()
    noise = torch.randn(delta.shape, generator=generator, dtype=delta.dtype)
    return delta + sigma * noise.to(delta.device)


@CLIENT_DEFENSES.register("gaussian_noise")
class GaussianNoise(ClientDefense):
    """Add i.i.d. Gaussian noise of standard deviation ``sigma`` to every payload entry."""

    def __init__(self, sigma: Annotated[float, Field(ge=0)] = 1e-3) -> None:
        self.sigma = sigma

    def apply(self, delta: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        return add_gaussian_noise(delta, sigma=self.sigma, generator=ctx.private_generator("gaussian_noise"))
