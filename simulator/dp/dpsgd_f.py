"""DPSGD-F: private feature centring and scaling before DP-SGD, for linear (first-layer-linear) models.

After "The Importance of Feature Preprocessing for Differentially Private Linear Optimization"
(ICLR 2024; the issue cites it as Tang et al., the arXiv listing names Sun, Suresh and Menon). The paper shows
that DP-SGD's error for linear models depends on the feature diameter, while privately centring the
features and scaling by a private estimate of their spread makes it depend on the (much smaller) spread
around the mean. Their algorithm spends part of the budget on the mean and on the radius, then runs DP-SGD
on the transformed features.

Our implementation, per client, once per run (stored in the client state, so the cost is paid once):

1. clip each flattened example to ``‖x‖ ≤ B``;
2. private mean ``μ̃ = (Σ x_i + N(0, (z_p·B)² I)) / n``
   (add/remove sensitivity ``B``; ``n`` treated as public);
3. private radius: a noisy histogram (``N(0, z_p²)`` per bin; one example is in one bin, sensitivity 1) of
   ``‖x_i − μ̃‖`` over geometric bins ``2B·2^{-k}``; ``r̃`` is the smallest edge whose noisy cumulative count
   reaches ``quantile · n``;
4. DP-SGD on ``x' = clip((x − μ̃)/r̃, 1)``.

Privacy: steps 2 and 3 are two Gaussian mechanisms with multiplier ``z_p`` on the full local dataset. A
Gaussian on the full dataset is a sampled Gaussian with ``q = 1``, so they are composed into the same
Opacus accountant as the DP-SGD steps as history rows ``(z_p, 1.0, 1)`` (exact, not a bound).

The model's first ``nn.Linear`` acts on ``x'``; since ``W'x' + b' = Wx + b`` with ``W = W'/r̃`` and
``b = b' − W'μ̃/r̃`` (for unclipped points), the client maps the global weights into the transformed space
before training and back afterwards, so the federated model always acts on raw features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from simulator.dp.input_perturbation import clip_rows

__all__ = [
    "NUM_BINS",
    "FeatureTransform",
    "first_linear",
    "private_feature_transform",
    "to_raw_space",
    "to_transformed_space",
]

NUM_BINS = 24


@dataclass(frozen=True)
class FeatureTransform:
    mean: torch.Tensor  # μ̃, flat (d,)
    radius: float  # r̃

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``clip((x − μ̃)/r̃, 1)``, same shape as ``x``."""
        flat = x.reshape(x.shape[0], -1) - self.mean.to(x.dtype)
        return clip_rows(flat / self.radius, 1.0).reshape(x.shape)

    def to_state(self) -> dict[str, np.ndarray]:
        return {"dpsgdf-mean": self.mean.numpy().astype(np.float64), "dpsgdf-radius": np.array([self.radius])}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> FeatureTransform | None:
        if "dpsgdf-mean" not in state:
            return None
        return cls(
            torch.as_tensor(np.asarray(state["dpsgdf-mean"]), dtype=torch.float64),
            float(np.asarray(state["dpsgdf-radius"]).reshape(-1)[0]),
        )


def private_feature_transform(
    x: torch.Tensor, *, bound: float, noise_multiplier: float, quantile: float, generator: torch.Generator
) -> tuple[FeatureTransform, list[tuple[float, float, int]]]:
    """The private (μ̃, r̃) and the accountant rows of the two releases."""
    flat = clip_rows(x.reshape(x.shape[0], -1), bound).to(torch.float64)
    n, d = flat.shape
    noise = torch.normal(0.0, noise_multiplier * bound, (d,), generator=generator, dtype=torch.float64)
    mean = (flat.sum(0) + noise) / max(n, 1)
    norms = torch.linalg.vector_norm(flat - mean, dim=1)
    edges = (
        2.0 * bound * torch.pow(2.0, -torch.arange(NUM_BINS - 1, -1, -1, dtype=torch.float64))
    )  # ascending
    # bin k holds norms in (edges[k-1], edges[k]]; the last bin also takes everything above the top edge
    idx = torch.bucketize(norms, edges).clamp(max=NUM_BINS - 1)
    counts = torch.bincount(idx, minlength=NUM_BINS).to(torch.float64)
    counts = counts + torch.normal(
        0.0, noise_multiplier, (NUM_BINS,), generator=generator, dtype=torch.float64
    )
    cum = torch.cumsum(counts, 0)
    hit = torch.nonzero(cum >= quantile * n)
    radius = float(edges[int(hit[0])]) if hit.numel() else float(edges[-1])
    rows = [(float(noise_multiplier), 1.0, 1), (float(noise_multiplier), 1.0, 1)]
    return FeatureTransform(mean, radius), rows


def first_linear(model: nn.Module) -> nn.Linear:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return m
    raise ValueError("DPSGD-F needs a model whose first layer is nn.Linear on flattened features")


@torch.no_grad()
def to_transformed_space(model: nn.Module, t: FeatureTransform) -> None:
    """``W' = W·r̃``, ``b' = b + W μ̃`` (in place)."""
    lin = first_linear(model)
    w = lin.weight.to(torch.float64)
    if lin.bias is not None:
        lin.bias.copy_((lin.bias.to(torch.float64) + w @ t.mean).to(lin.bias.dtype))
    lin.weight.copy_((w * t.radius).to(lin.weight.dtype))


@torch.no_grad()
def to_raw_space(model: nn.Module, t: FeatureTransform) -> None:
    """``W = W'/r̃``, ``b = b' − W μ̃`` (in place)."""
    lin = first_linear(model)
    w = lin.weight.to(torch.float64) / t.radius
    if lin.bias is not None:
        lin.bias.copy_((lin.bias.to(torch.float64) - w @ t.mean).to(lin.bias.dtype))
    lin.weight.copy_(w.to(lin.weight.dtype))
