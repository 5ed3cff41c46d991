"""Sparsification baselines: ``topk`` and ``randk`` (payload: k int32 indices + k float32 values).

Top-k keeps the k largest-magnitude coordinates (Aji & Heafield, EMNLP 2017; Stich, Cordonnier, Jaggi,
NeurIPS 2018); it is biased but contractive, ‖C(x) − x‖² ≤ (1 − k/d)‖x‖². Rand-k keeps k uniformly random
coordinates; scaled by d/k it is unbiased (Stich et al. 2018), unscaled it is contractive in expectation with
the same δ = k/d. k is fixed for a run (from ``k`` or ``k_ratio``), so the spec has fixed shapes.

The server drops payload entries whose index is outside [0, d) and sums duplicate indices: a malformed reply
can waste its own budget but cannot crash decoding.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from simulator.context import ClientContext, RoundContext
from simulator.flat import Layout
from simulator.sketching.base import COMPRESSORS, ArraySpec, Compressor

__all__ = ["RandK", "TopK", "densify", "rand_k", "resolve_k", "sparse_spec", "top_k"]

KRatio = Annotated[float, Field(gt=0.0, le=1.0)]


def resolve_k(dim: int, *, k: int | None, k_ratio: float) -> int:
    """k from an explicit count or a fraction of d, clipped to [1, d]."""
    return int(min(dim, max(1, k if k is not None else math.ceil(k_ratio * dim))))


def top_k(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, values) of the k entries of largest magnitude (ties broken by torch.topk)."""
    idx = x.abs().topk(k, sorted=False).indices
    return idx, x[idx]


def rand_k(
    x: torch.Tensor, k: int, generator: torch.Generator, *, scale: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, values) of k uniformly random entries, values times d/k when ``scale`` (unbiased)."""
    idx = torch.randperm(x.numel(), generator=generator)[:k]
    vals = x[idx] * (x.numel() / k) if scale else x[idx]
    return idx, vals


def densify(indices: torch.Tensor, values: torch.Tensor, dim: int) -> torch.Tensor:
    """Dense (..., d) vectors from (..., k) indices and values; out-of-range indices are dropped."""
    idx = indices.to(torch.int64)
    vals = values.to(torch.float32)
    ok = (idx >= 0) & (idx < dim)
    vals = torch.where(ok, vals, torch.zeros_like(vals))
    idx = torch.where(ok, idx, torch.zeros_like(idx))
    out = torch.zeros(*idx.shape[:-1], dim)
    return out.scatter_add_(-1, idx, vals)


def sparse_spec(k: int) -> dict[str, ArraySpec]:
    return {"indices": ArraySpec((k,), "int32"), "values": ArraySpec((k,), "float32")}


def to_payload(indices: torch.Tensor, values: torch.Tensor) -> dict[str, np.ndarray]:
    return {"indices": indices.to(torch.int32).numpy(), "values": values.to(torch.float32).numpy()}


def decode_sparse(payloads: list[dict[str, torch.Tensor]], dim: int) -> torch.Tensor:
    idx = torch.stack([p["indices"].reshape(-1) for p in payloads])
    vals = torch.stack([p["values"].reshape(-1) for p in payloads])
    return densify(idx, vals, dim)


@COMPRESSORS.register("topk")
class TopK(Compressor):
    """Top-k sparsification (Aji & Heafield 2017), no error feedback (see ``ef`` for that).

    Parameters
    ----------
    k_ratio
        k/d, used when ``k`` is not given.
    k
        The number of coordinates sent.
    """

    def __init__(self, k_ratio: KRatio = 0.01, k: Annotated[int, Field(ge=1)] | None = None) -> None:
        self.k_ratio, self.k = k_ratio, k

    def spec(self, layout: Layout, server_round: int) -> dict[str, ArraySpec]:
        return sparse_spec(resolve_k(layout.dim, k=self.k, k_ratio=self.k_ratio))

    def encode(self, delta: torch.Tensor, ctx: ClientContext) -> dict[str, np.ndarray]:
        x = delta.detach().to(torch.float32).cpu().reshape(-1)
        return to_payload(*top_k(x, resolve_k(x.numel(), k=self.k, k_ratio=self.k_ratio)))

    def decode(self, payloads: list[dict[str, torch.Tensor]], ctx: RoundContext) -> torch.Tensor:
        return decode_sparse(payloads, ctx.layout.dim)


@COMPRESSORS.register("randk")
class RandK(Compressor):
    """Random-k sparsification (Stich, Cordonnier, Jaggi, NeurIPS 2018), indices private to each client.

    Parameters
    ----------
    k_ratio, k
        As for ``topk``.
    unbiased
        Scale the kept values by d/k so the decoded update is unbiased (variance grows by d/k).
    """

    def __init__(
        self, *, k_ratio: KRatio = 0.01, k: Annotated[int, Field(ge=1)] | None = None, unbiased: bool = True
    ) -> None:
        self.k_ratio, self.k, self.unbiased = k_ratio, k, unbiased

    def spec(self, layout: Layout, server_round: int) -> dict[str, ArraySpec]:
        return sparse_spec(resolve_k(layout.dim, k=self.k, k_ratio=self.k_ratio))

    def encode(self, delta: torch.Tensor, ctx: ClientContext) -> dict[str, np.ndarray]:
        x = delta.detach().to(torch.float32).cpu().reshape(-1)
        k = resolve_k(x.numel(), k=self.k, k_ratio=self.k_ratio)
        return to_payload(*rand_k(x, k, ctx.generator("randk"), scale=self.unbiased))

    def decode(self, payloads: list[dict[str, torch.Tensor]], ctx: RoundContext) -> torch.Tensor:
        return decode_sparse(payloads, ctx.layout.dim)
