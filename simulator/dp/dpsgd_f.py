"""DPSGD-F: private feature centring and scaling before DP-SGD, for models whose first layer is an
``nn.Linear`` on flattened features (MLPs, linear models) or an ``nn.Conv2d`` on the image (CNNs).

After "The Importance of Feature Preprocessing for Differentially Private Linear Optimization"
(ICLR 2024; the issue cites it as Tang et al., the arXiv listing names Sun, Suresh and Menon). The paper shows
that DP-SGD's error for linear models depends on the feature diameter, while privately centring the
features and scaling by a private estimate of their spread makes it depend on the (much smaller) spread
around the mean. Their algorithm spends part of the budget on the mean and on the radius, then runs DP-SGD
on the transformed features. (Not to be confused with Xu, Du & Wu's "DPSGD-F", KDD 2021, which adapts the
clip norm per group to remove disparate impact: a different algorithm with the same name.)

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
Opacus accountant as the DP-SGD steps as history rows ``(z_p, 1.0, 1)`` (exact, not a bound). Everything
below (the weight maps, the channel means) is post-processing of ``μ̃`` and ``r̃``.

The federated model always acts on raw features: the client maps the global weights into the transformed
space before training and back afterwards (both maps are exact for unclipped points).

* First layer ``nn.Linear`` (the paper's linear case): since ``W'x' + b' = Wx + b`` with ``W = W'/r̃`` and
  ``b = b' − W'μ̃/r̃``, the maps are ``W' = W·r̃``, ``b' = b + Wμ̃``.
* First layer ``nn.Conv2d`` (our extension to CNNs): a convolution's bias is one number per output channel, so
  the centring it can absorb is per *input channel*: ``m_c``, the mean of ``μ̃`` over the pixels of channel
  ``c``. Zero padding of ``x − m`` is not zero padding of ``x``, so while the client trains, the convolution's
  own padding is switched off and a forward pre-hook feeds it ``pad₀(x' + μ̃/r̃) − m/r̃``, which for unclipped
  ``x'`` is ``(pad₀(x) − m)/r̃``: the raw zero-padded image, centred per channel and scaled. The maps are
  ``W' = W·r̃``, ``b'_o = b_o + Σ_{c,i,j} W_{o,c,i,j}·m_c`` and back; the hook and the padding are restored
  by :func:`to_raw_space`. A convolution without bias is scaled only (``m = 0``). The clip of ``x'`` and the
  radius still use the per-pixel ``μ̃``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from simulator.dp.input_perturbation import clip_rows

__all__ = [
    "NUM_BINS",
    "FeatureTransform",
    "first_layer",
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
    """The model's first layer when it is an ``nn.Linear`` (see :func:`first_layer`)."""
    layer = first_layer(model)
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"the model's first layer is {type(layer).__name__}, not nn.Linear")
    return layer


def first_layer(model: nn.Module) -> nn.Linear | nn.Conv2d:
    """The first module (in registration order) that holds parameters: the layer the features enter.

    DPSGD-F maps this layer's weights; it must be an ``nn.Linear`` (on flattened features) or an ``nn.Conv2d``
    with ``groups = 1``, zero padding given as numbers, and nothing with parameters registered before it.
    """
    for m in model.modules():
        if next(m.parameters(recurse=False), None) is None:
            continue
        if isinstance(m, nn.Linear):
            return m
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ValueError(
                    "DPSGD-F maps a first nn.Conv2d with groups = 1 and numeric zero padding; got groups = "
                    f"{m.groups}, padding = {m.padding!r}, padding_mode = {m.padding_mode!r}"
                )
            return m
        raise ValueError(
            f"DPSGD-F needs a model whose first layer is nn.Linear or nn.Conv2d; the first layer with "
            f"parameters is {type(m).__name__}"
        )
    raise ValueError("DPSGD-F needs a model with parameters")


def _channel_means(conv: nn.Conv2d, t: FeatureTransform) -> torch.Tensor:
    """m_c: μ̃ averaged over the pixels of each input channel (0 when the convolution has no bias)."""
    c = conv.in_channels
    if t.mean.numel() % c:
        raise ValueError(f"the feature mean has {t.mean.numel()} entries, not a multiple of {c} channels")
    if conv.bias is None:
        return torch.zeros(c, dtype=torch.float64)
    return t.mean.reshape(c, -1).mean(1)


class _CentredPadding:
    """Forward pre-hook of the first convolution in the transformed space: ``pad₀(x' + μ̃/r̃) − m/r̃``."""

    def __init__(self, t: FeatureTransform, m: torch.Tensor, padding: tuple[int, int]) -> None:
        self.shift = t.mean / t.radius  # flat, reshaped to the input in __call__
        self.offset = (m / t.radius).reshape(1, -1, 1, 1)
        self.pad = (padding[1], padding[1], padding[0], padding[0])

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        inside = x + self.shift.reshape(x.shape[1:]).to(x.dtype)
        padded = nn.functional.pad(inside, self.pad) - self.offset.to(x.dtype)
        return (padded, *args[1:])


#: the hook handle and original padding of every convolution currently in the transformed space
_PATCHED: weakref.WeakKeyDictionary[nn.Conv2d, tuple[Any, tuple[int, ...]]] = weakref.WeakKeyDictionary()


@torch.no_grad()
def to_transformed_space(model: nn.Module, t: FeatureTransform) -> None:
    """Map the raw-space weights into the transformed space (in place); see the module docstring."""
    layer = first_layer(model)
    w = layer.weight.to(torch.float64)
    if isinstance(layer, nn.Linear):
        if layer.bias is not None:
            layer.bias.copy_((layer.bias.to(torch.float64) + w @ t.mean).to(layer.bias.dtype))
        layer.weight.copy_((w * t.radius).to(layer.weight.dtype))
        return
    if layer in _PATCHED:
        raise ValueError("the first convolution is already in the DPSGD-F transformed space")
    m = _channel_means(layer, t)
    if layer.bias is not None:
        layer.bias.copy_(
            (layer.bias.to(torch.float64) + torch.einsum("ocij,c->o", w, m)).to(layer.bias.dtype)
        )
    layer.weight.copy_((w * t.radius).to(layer.weight.dtype))
    padding = tuple(int(p) for p in layer.padding)
    assert len(padding) == 2
    handle = layer.register_forward_pre_hook(_CentredPadding(t, m, (padding[0], padding[1])))
    _PATCHED[layer] = (handle, padding)
    layer.padding = (0, 0)


@torch.no_grad()
def to_raw_space(model: nn.Module, t: FeatureTransform) -> None:
    """Map the transformed-space weights back to the raw space (in place); undoes
    :func:`to_transformed_space`."""
    layer = first_layer(model)
    w = layer.weight.to(torch.float64) / t.radius
    if isinstance(layer, nn.Linear):
        if layer.bias is not None:
            layer.bias.copy_((layer.bias.to(torch.float64) - w @ t.mean).to(layer.bias.dtype))
        layer.weight.copy_(w.to(layer.weight.dtype))
        return
    if layer not in _PATCHED:
        raise ValueError("the first convolution is not in the DPSGD-F transformed space")
    handle, padding = _PATCHED.pop(layer)
    handle.remove()
    layer.padding = padding
    m = _channel_means(layer, t)
    if layer.bias is not None:
        layer.bias.copy_(
            (layer.bias.to(torch.float64) - torch.einsum("ocij,c->o", w, m)).to(layer.bias.dtype)
        )
    layer.weight.copy_(w.to(layer.weight.dtype))
