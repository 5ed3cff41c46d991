"""Flat parameter vectors: the one representation updates travel in inside privsim.

Every floating-point entry of a model's ``state_dict`` is laid end to end in a fixed order, so a
client update is a vector Δ ∈ ℝ^d and a round's updates are a matrix U ∈ ℝ^{n×d}. Aggregators,
sketches, clipping and noise all work on these; integer buffers (BatchNorm's counters) are not
part of the vector and stay with the global model.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["Layout", "flatten", "layout_of", "load_vector", "model_vector", "unflatten"]


@dataclass(frozen=True)
class Layout:
    """Names, shapes and offsets of the floating entries of a state dict."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @property
    def dim(self) -> int:
        return int(sum(self.sizes))

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, size in zip(self.names, self.sizes):
            out[name] = slice(start, start + size)
            start += size
        return out


def layout_of(state: nn.Module | dict[str, torch.Tensor]) -> Layout:
    sd = state.state_dict() if isinstance(state, nn.Module) else state
    names = tuple(k for k, v in sd.items() if torch.is_floating_point(v))
    return Layout(names, tuple(tuple(sd[k].shape) for k in names))


def flatten(sd: dict[str, torch.Tensor], layout: Layout) -> torch.Tensor:
    """Concatenate the floating entries of ``sd`` in ``layout`` order (float32, detached)."""
    return torch.cat([sd[n].detach().reshape(-1).to(torch.float32) for n in layout.names])


def unflatten(vec: torch.Tensor, layout: Layout) -> OrderedDict[str, torch.Tensor]:
    if vec.numel() != layout.dim:
        raise ValueError(f"vector has {vec.numel()} entries, layout expects {layout.dim}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (name, sl), shape in zip(layout.slices().items(), layout.shapes):
        out[name] = vec[sl].reshape(shape)
    return out


def model_vector(model: nn.Module, layout: Layout | None = None) -> torch.Tensor:
    return flatten(model.state_dict(), layout or layout_of(model))


@torch.no_grad()
def load_vector(model: nn.Module, vec: torch.Tensor, layout: Layout | None = None) -> None:
    """Write ``vec`` into the model's floating state entries in place."""
    layout = layout or layout_of(model)
    sd = model.state_dict()
    for name, part in unflatten(vec, layout).items():
        sd[name].copy_(part.to(sd[name].dtype).to(sd[name].device))
