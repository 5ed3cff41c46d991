"""L2 clipping of the client's payload (the norm bound of DP-FedAvg, McMahan et al., "Learning
Differentially Private Recurrent Language Models", ICLR 2018)."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from defenses.base import CLIENT_DEFENSES, ClientDefense
from simulator.context import ClientContext

__all__ = ["Clip", "clip_l2"]


def clip_l2(delta: torch.Tensor, *, max_norm: float) -> torch.Tensor:
    """``delta · min(1, max_norm / ‖delta‖₂)``.

    >>> clip_l2(torch.tensor([3.0, 4.0]), max_norm=1.0)
    tensor([0.6000, 0.8000])
    """
    norm = float(delta.norm())
    return delta * (max_norm / norm) if norm > max_norm else delta.clone()


@CLIENT_DEFENSES.register("clip")
class Clip(ClientDefense):
    """Scale the payload down to an L2 norm of at most ``max_norm``."""

    def __init__(self, max_norm: Annotated[float, Field(gt=0)] = 1.0) -> None:
        self.max_norm = max_norm

    def apply(self, delta: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        return clip_l2(delta, max_norm=self.max_norm)
