"""Magnitude pruning of the client's payload ("gradient compression" defense of Zhu et al., "Deep
Leakage from Gradients", NeurIPS 2019, Sec. 5: the smallest-magnitude entries are set to zero)."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from defenses.base import CLIENT_DEFENSES, ClientDefense
from simulator.context import ClientContext

__all__ = ["Prune", "prune_smallest"]


def prune_smallest(delta: torch.Tensor, *, fraction: float) -> torch.Tensor:
    """Zero the ``⌊fraction · d⌋`` entries of smallest magnitude (ties broken by position).

    >>> prune_smallest(torch.tensor([0.1, -3.0, 0.5, 2.0]), fraction=0.5)
    tensor([ 0., -3.,  0.,  2.])
    """
    k = int(fraction * delta.numel())
    out = delta.clone()
    if k > 0:
        idx = torch.argsort(delta.abs().flatten(), stable=True)[:k]
        out.view(-1)[idx] = 0
    return out


@CLIENT_DEFENSES.register("prune")
class Prune(ClientDefense):
    """Zero the ``fraction`` of payload entries with the smallest magnitude."""

    def __init__(self, fraction: Annotated[float, Field(ge=0, le=1)] = 0.5) -> None:
        self.fraction = fraction

    def apply(self, delta: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        return prune_smallest(delta, fraction=self.fraction)
