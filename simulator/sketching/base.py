"""Update compression between client and server (sketching, sparsification).

A :class:`Compressor` turns a client's flat update into the arrays that go on the wire
(``encode``, client side, may keep error-feedback state in ``ctx.state``) and turns the round's
payloads back into per-client update estimates (``decode``, server side). A compressor that must
aggregate in its compressed domain (FetchSGD) sets ``aggregates_in_sketch_space`` and implements
``decode_aggregate`` instead; robust aggregators then see nothing per client.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from simulator.context import ClientContext, RoundContext
from simulator.flat import Layout
from simulator.registry import Registry

__all__ = ["COMPRESSORS", "ArraySpec", "Compressor", "Identity"]


@dataclass(frozen=True)
class ArraySpec:
    """The shape and dtype a payload array must have; the server rejects anything else."""

    shape: tuple[int, ...]
    dtype: str = "float32"


class Compressor(ABC):
    """A client-side encoder and its server-side decoder. Capabilities (read by load-time checks, never
    names):"""

    #: the server merges payloads before decoding (FetchSGD): there is no per-client update for an aggregator
    #: or an inversion attack to see
    aggregates_in_sketch_space: bool = False
    #: one client's payload decodes on its own (stateless and linear), so it can be attacked alone
    decodes_alone: bool = False
    #: the payload is a linear sketch ``R·Δ`` from shared randomness (an attack may match in sketch space)
    is_sketch: bool = False

    @abstractmethod
    def spec(self, layout: Layout, server_round: int) -> dict[str, ArraySpec]:
        """The arrays a valid reply carries in this round."""

    @abstractmethod
    def encode(self, delta: torch.Tensor, ctx: ClientContext) -> dict[str, np.ndarray]: ...

    def decode(self, payloads: list[dict[str, torch.Tensor]], ctx: RoundContext) -> torch.Tensor:
        """Per-client update estimates, one row per payload (same order)."""
        raise NotImplementedError

    def decode_aggregate(
        self, payloads: list[dict[str, torch.Tensor]], weights: torch.Tensor, ctx: RoundContext
    ) -> torch.Tensor:
        """The aggregate update, for compressors that aggregate in their own domain."""
        raise NotImplementedError

    def server_state_bytes(self) -> int:
        return 0


COMPRESSORS: Registry[Compressor] = Registry("compressor")


@COMPRESSORS.register("none")
class Identity(Compressor):
    """No compression: the dense float32 update goes on the wire."""

    decodes_alone = True

    def spec(self, layout: Layout, server_round: int) -> dict[str, ArraySpec]:
        return {"delta": ArraySpec((layout.dim,))}

    def encode(self, delta: torch.Tensor, ctx: ClientContext) -> dict[str, np.ndarray]:
        return {"delta": delta.detach().to(torch.float32).cpu().numpy()}

    def decode(self, payloads: list[dict[str, torch.Tensor]], ctx: RoundContext) -> torch.Tensor:
        return torch.stack([p["delta"] for p in payloads])
