"""Client-side error feedback around a biased (contractive) compressor: ``ef``, ``ef21``, ``econtrol``.

The inner compressor C is top-k or unscaled rand-k (both contractive: E‖C(x) − x‖² ≤ (1 − k/d)‖x‖²); the
payload is its k indices and values (see :mod:`simulator.sketching.sparsify`). Client memory lives in
``ctx.state`` (persisted per client across rounds); server memory, where a method needs it, lives in the
compressor.

* ``ef`` (Seide et al., Interspeech 2014; Karimireddy et al., ICML 2019, EF-SGD): p = e + Δ, send m = C(p),
  e ← p − m. The server decodes m. Σ_t m_t = Σ_t Δ_t − e_T: what was not sent is sent later.
* ``ef21`` (Richtárik, Sokolov, Fatkhullin, NeurIPS 2021): the client keeps h_i, sends c = C(Δ − h_i) and sets
  h_i ← h_i + c; the server keeps the same h_i (it sees every c) and decodes client i's estimate as h_i.
* ``econtrol`` (Gao, Islamov, Stich, ICLR 2024): m = C(η·e_i + Δ − h_i), e_i ← e_i + Δ − h_i − m, h_i ← h_i +
  m; the server mirrors h_i like EF21. With η = 0 it is EF21 exactly (e_i is then never used).

Initialisation: e_i⁰ = h_i⁰ = 0, so a client's first message is C(Δ⁰) and after it h_i = C(Δ⁰), i.e. the
papers' h_i⁰ = C(g_i⁰) option one round later (the uncompressed h_i⁰ = g_i⁰ option would need a dense first
payload, which a fixed spec cannot carry). The server decodes the h_i of the clients that replied, so a fedavg
aggregator averages over the round's participants; with full participation this is the papers' h = mean_i h_i.
With partial participation the h_i of absent clients go stale on both sides until they next participate.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from simulator.context import ClientContext, RoundContext
from simulator.flat import Layout
from simulator.sketching.base import COMPRESSORS, ArraySpec, Compressor
from simulator.sketching.sparsify import (
    KRatio,
    decode_sparse,
    densify,
    rand_k,
    resolve_k,
    sparse_spec,
    to_payload,
    top_k,
)

__all__ = ["EF21", "EControl", "ErrorFeedback"]


def _state(ctx: ClientContext, key: str, dim: int) -> torch.Tensor:
    v = ctx.state.get(key)
    if v is None or v.shape != (dim,):
        return torch.zeros(dim)
    return torch.from_numpy(np.array(v, dtype=np.float32))


class _ContractiveBase(Compressor):
    """Shared parameters: the inner contractive compressor and its k."""

    def __init__(
        self,
        *,
        inner: Literal["topk", "randk"] = "topk",
        k_ratio: KRatio = 0.01,
        k: Annotated[int, Field(ge=1)] | None = None,
    ) -> None:
        self.inner, self.k_ratio, self.k = inner, k_ratio, k

    def _k(self, dim: int) -> int:
        return resolve_k(dim, k=self.k, k_ratio=self.k_ratio)

    def spec(self, layout: Layout, server_round: int) -> dict[str, ArraySpec]:
        return sparse_spec(self._k(layout.dim))

    def compress(self, x: torch.Tensor, ctx: ClientContext) -> tuple[torch.Tensor, torch.Tensor]:
        """C(x) as (indices, values): top-k, or rand-k without rescaling (contractive, biased)."""
        k = self._k(x.numel())
        if self.inner == "topk":
            return top_k(x, k)
        return rand_k(x, k, ctx.generator("ef-randk"), scale=False)

    @staticmethod
    def _flat(delta: torch.Tensor) -> torch.Tensor:
        return delta.detach().to(torch.float32).cpu().reshape(-1)


@COMPRESSORS.register("ef")
class ErrorFeedback(_ContractiveBase):
    """Classic error feedback (Seide et al. 2014; Karimireddy et al., ICML 2019) around top-k / rand-k.

    Parameters
    ----------
    inner
        The contractive compressor: ``"topk"`` or ``"randk"`` (unscaled).
    k_ratio, k
        k/d or k.
    """

    def encode(self, delta: torch.Tensor, ctx: ClientContext) -> dict[str, np.ndarray]:
        x = self._flat(delta)
        p = _state(ctx, "ef/error", x.numel()) + x
        idx, vals = self.compress(p, ctx)
        ctx.state["ef/error"] = (p - densify(idx, vals, x.numel())).numpy()
        return to_payload(idx, vals)

    def decode(self, payloads: list[dict[str, torch.Tensor]], ctx: RoundContext) -> torch.Tensor:
        return decode_sparse(payloads, ctx.layout.dim)


class _MirroredEstimates(_ContractiveBase):
    """A server that mirrors each client's estimate h_i (EF21-style) and decodes h_i."""

    def __init__(
        self,
        *,
        inner: Literal["topk", "randk"] = "topk",
        k_ratio: KRatio = 0.01,
        k: Annotated[int, Field(ge=1)] | None = None,
    ) -> None:
        super().__init__(inner=inner, k_ratio=k_ratio, k=k)
        self._h: dict[int, torch.Tensor] = {}

    def decode(self, payloads: list[dict[str, torch.Tensor]], ctx: RoundContext) -> torch.Tensor:
        msgs = decode_sparse(payloads, ctx.layout.dim)
        rows = []
        for cid, m in zip(ctx.client_ids, msgs):
            h = self._h.get(cid)
            h = m.clone() if h is None or h.numel() != m.numel() else h + m
            self._h[cid] = h
            rows.append(h)
        return torch.stack(rows)

    def server_state_bytes(self) -> int:
        return 4 * sum(h.numel() for h in self._h.values())


@COMPRESSORS.register("ef21")
class EF21(_MirroredEstimates):
    """EF21 (Richtárik, Sokolov, Fatkhullin, NeurIPS 2021): send C(Δ − h_i), both sides add it to h_i.

    Parameters
    ----------
    inner, k_ratio, k
        As for ``ef``.
    """

    def encode(self, delta: torch.Tensor, ctx: ClientContext) -> dict[str, np.ndarray]:
        x = self._flat(delta)
        h = _state(ctx, "ef21/h", x.numel())
        idx, vals = self.compress(x - h, ctx)
        ctx.state["ef21/h"] = (h + densify(idx, vals, x.numel())).numpy()
        return to_payload(idx, vals)


@COMPRESSORS.register("econtrol")
class EControl(_MirroredEstimates):
    """EControl (Gao, Islamov, Stich, ICLR 2024): m = C(η·e_i + Δ − h_i), e_i += Δ − h_i − m, h_i += m.

    Parameters
    ----------
    inner, k_ratio, k
        As for ``ef``.
    eta
        η, how much of the accumulated error is fed back (the paper's theory takes η = δ/400 with δ = k/d; its
        experiments tune it). η = 0 is EF21.
    """

    def __init__(
        self,
        *,
        inner: Literal["topk", "randk"] = "topk",
        k_ratio: KRatio = 0.01,
        k: Annotated[int, Field(ge=1)] | None = None,
        eta: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1,
    ) -> None:
        super().__init__(inner=inner, k_ratio=k_ratio, k=k)
        self.eta = eta

    def encode(self, delta: torch.Tensor, ctx: ClientContext) -> dict[str, np.ndarray]:
        x = self._flat(delta)
        e = _state(ctx, "econtrol/e", x.numel())
        h = _state(ctx, "econtrol/h", x.numel())
        idx, vals = self.compress(self.eta * e + x - h, ctx)
        m = densify(idx, vals, x.numel())
        ctx.state["econtrol/e"] = (e + x - h - m).numpy()
        ctx.state["econtrol/h"] = (h + m).numpy()
        return to_payload(idx, vals)
