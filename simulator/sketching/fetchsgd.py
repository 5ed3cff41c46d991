"""FetchSGD: count-sketched updates with momentum and error feedback kept in sketch space on the server.

Rothchild, Panda, Ullah, Ivkin, Stoica, Braverman, Gonzalez, Arora, "FetchSGD: Communication-Efficient
Federated Learning with Sketching", ICML 2020. Clients are stateless: each sends the count sketch S(Δ_i) of
its update (one hash family for the whole run, since the server's state lives in sketch space). The server,
per round:

1. S = Σ_i w_i S(Δ_i) / Σ_i w_i            (linearity: the sketch of the weighted mean update)
2. S_u ← ρ·S_u + S                        (momentum in sketch space)
3. S_e ← S_e + S_u                        (error accumulation in sketch space)
4. Δ = Top-k(U(S_e))                       (median-of-rows estimates of all d coordinates, keep the k largest)
5. error feedback, ``error_reset``:
   ``"zero"`` (default, the authors' code, CommEfficient): zero S_e and S_u at the buckets where S(Δ) ≠ 0;
   ``"subtract"`` (the paper's Algorithm 1): S_e ← S_e − S(Δ), S_u unchanged.
6. return Δ; the strategy applies w ← w + η_server·Δ.

Updates here are Δ = w_local − w_global (a descent step already), so no sign flip or learning rate enters the
sketch. With ``error_feedback = false`` steps 3 and 5 are skipped: Δ = Top-k(U(S_u)) and nothing is zeroed.
Deviation from the paper: no second round trip to fetch the exact values of the k coordinates; their values
are the sketch's median estimates (the paper's variant without that round).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from simulator.context import ClientContext, RoundContext
from simulator.flat import Layout
from simulator.sketching.base import COMPRESSORS, ArraySpec, Compressor
from simulator.sketching.operators import CountSketch, derive_operator_seed

__all__ = ["FetchSGD"]


@COMPRESSORS.register("fetchsgd")
class FetchSGD(Compressor):
    """FetchSGD (Rothchild et al., ICML 2020): count sketch, server momentum and error feedback in sketch space.

    Parameters
    ----------
    rows
        Count-sketch rows r.
    cols
        Count-sketch columns c; default ⌈ratio·d / r⌉.
    ratio
        Sketch size r·c as a fraction of d, used when ``cols`` is not given.
    k
        Coordinates applied per round; default ⌈k_ratio·d⌉.
    k_ratio
        k/d when ``k`` is not given.
    momentum
        ρ, the server momentum in sketch space (0: none).
    error_feedback
        Accumulate what was not applied in S_e (FetchSGD); false: Top-k of the momentum sketch only.
    error_reset
        ``"zero"`` (authors' code) or ``"subtract"`` (paper's Algorithm 1); see the module docstring.
    chunk_size
        Coordinates hashed at once (memory bound); results do not depend on it.
    """  # noqa: E501  (the first line is the `privsim list` summary: kept whole)

    aggregates_in_sketch_space = True

    def __init__(
        self,
        *,
        rows: Annotated[int, Field(ge=1)] = 5,
        cols: Annotated[int, Field(ge=1)] | None = None,
        ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1,
        k: Annotated[int, Field(ge=1)] | None = None,
        k_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.01,
        momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9,
        error_feedback: bool = True,
        error_reset: Literal["zero", "subtract"] = "zero",
        chunk_size: Annotated[int, Field(ge=1)] | None = None,
    ) -> None:
        self.rows, self.cols, self.ratio = rows, cols, ratio
        self.k, self.k_ratio = k, k_ratio
        self.momentum, self.error_feedback, self.error_reset = momentum, error_feedback, error_reset
        self.chunk_size = chunk_size
        self._op: CountSketch | None = None
        self.s_u: torch.Tensor | None = None  # momentum sketch
        self.s_e: torch.Tensor | None = None  # error sketch

    def _cols(self, dim: int) -> int:
        return self.cols if self.cols is not None else max(1, math.ceil(self.ratio * dim / self.rows))

    def _k(self, dim: int) -> int:
        return int(min(dim, self.k if self.k is not None else max(1, math.ceil(self.k_ratio * dim))))

    def operator(self, *, seed: int, dim: int) -> CountSketch:
        """The run's count sketch (same hashes every round, on every client and the server)."""
        op_seed = derive_operator_seed(seed, "fetchsgd")
        if self._op is None or self._op.seed != op_seed or self._op.dim != dim:
            self._op = CountSketch(
                dim, op_seed, rows=self.rows, cols=self._cols(dim), chunk_size=self.chunk_size
            )
        return self._op

    def spec(self, layout: Layout, server_round: int) -> dict[str, ArraySpec]:
        return {"sketch": ArraySpec((self.rows * self._cols(layout.dim),))}

    # ---- CLIENT SIDE (stateless) ----
    def encode(self, delta: torch.Tensor, ctx: ClientContext) -> dict[str, np.ndarray]:
        x = delta.detach().to(torch.float32).cpu().reshape(-1)
        return {"sketch": self.operator(seed=ctx.seed, dim=x.numel()).sketch(x).numpy()}

    # ---- SERVER SIDE ----
    def decode(self, payloads: list[dict[str, torch.Tensor]], ctx: RoundContext) -> torch.Tensor:
        raise NotImplementedError("fetchsgd aggregates in sketch space; the strategy calls decode_aggregate")

    def decode_aggregate(
        self, payloads: list[dict[str, torch.Tensor]], weights: torch.Tensor, ctx: RoundContext
    ) -> torch.Tensor:
        op = self.operator(seed=ctx.seed, dim=ctx.layout.dim)
        y = torch.stack([p["sketch"].to(torch.float32).reshape(-1) for p in payloads])
        w = weights.to(torch.float32).cpu()
        s = (w / w.sum()) @ y
        if self.s_u is None or self.s_u.numel() != s.numel():
            self.s_u, self.s_e = torch.zeros_like(s), torch.zeros_like(s)
        assert self.s_e is not None
        self.s_u = self.momentum * self.s_u + s
        if not self.error_feedback:
            return op.unsketch_topk(self.s_u, self._k(op.dim))
        self.s_e = self.s_e + self.s_u
        delta = op.unsketch_topk(self.s_e, self._k(op.dim))
        applied = op.sketch(delta)
        if self.error_reset == "zero":
            touched = applied != 0
            self.s_e[touched] = 0.0
            self.s_u[touched] = 0.0
        else:
            self.s_e = self.s_e - applied
        return delta

    def server_state_bytes(self) -> int:
        return 0 if self.s_u is None else 8 * self.s_u.numel()
