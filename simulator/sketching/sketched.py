"""Sketched FedAvg compressors (``gaussian_sketch``, ``srht``, ``count_sketch``), with optional DP on the
sketch.

Song, Wang, Yu, Zhang, "Sketching for First Order Method: Efficient Algorithm for Low-Bandwidth Channel and
Vulnerability", ICML 2023: each client sends y_i = R_t·Δ_i with R_t ∈ ℝ^{s×d} drawn afresh every round t from
shared randomness (here: the scenario seed and the round); the server de-sketches. By default every client's
sketch is de-sketched on its own (``decode``), so robust aggregators still see one estimate per client; with
``aggregate_in_sketch_space = true`` the server averages the sketches first and de-sketches once, as in the
paper (equal for the linear de-sketches, by linearity).

Sketch + DP (the paper's remedy for the leakage it shows). With ``clip_norm = C`` and ``noise_multiplier = z``
the client

1. clips Δ to ‖Δ‖₂ ≤ C,
2. sketches it, y = R·Δ,
3. clips the sketch to ‖y‖₂ ≤ g·C, where g is the operator's nominal norm gain (1 for Gaussian and SRHT, whose
   E‖Rx‖² = ‖x‖²; √rows for the unnormalised count-sketch table, whose E‖T‖² = rows·‖x‖²),
4. adds N(0, (z·g·C)² I_s) drawn from a generator private to the client.

Why step 3: R is not an isometry. For a Gaussian R with N(0, 1/s) entries ‖R‖_op ≈ 1 + √(d/s) ≫ 1, so a bound
‖R·Δ‖ ≤ C holds for a fixed Δ only with high probability (Johnson–Lindenstrauss), not for every Δ. Clipping in
sketch space makes the L2 sensitivity of one client's contribution exactly g·C whatever R is, with no failure
probability; it rarely changes y (‖R·Δ‖ ≈ ‖Δ‖ ≤ C up to O(1/√s) fluctuations). R itself is public and
independent of the data, so releasing it costs nothing.

What ε this is: per round, each client's sketch is the Gaussian mechanism with noise multiplier z with respect
to adding or removing that client's contribution (sensitivity g·C, std z·g·C); the sum of the cohort's
sketches carries noise std z·g·C·√n ≥ z·g·C, so accounting the sum as DP-FedAvg's Gaussian mechanism with (z,
C) is valid (conservative). Across rounds, compose with client subsampling as for DP-FedAvg: that is what the
accountant does with :meth:`SketchCompressor.privacy_params`. For a server that sees each sketch alone and
replace-one neighbouring (Δ → Δ'), the sensitivity is 2·g·C, i.e. noise multiplier z/2. The de-sketched noise
Rᵀ·N has norm ≈ √(d/s) times the sketch noise for the Gaussian and SRHT families: sketching buys no utility
for the same ε.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from simulator.context import ClientContext, RoundContext
from simulator.flat import Layout
from simulator.sketching.base import COMPRESSORS, ArraySpec, Compressor
from simulator.sketching.operators import (
    SRHT,
    CountSketch,
    GaussianSketch,
    SketchOperator,
    derive_operator_seed,
)

__all__ = [
    "CountSketchCompressor",
    "GaussianSketchCompressor",
    "SRHTCompressor",
    "SketchCompressor",
    "clip_to_norm",
]

Ratio = Annotated[float, Field(gt=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]


def clip_to_norm(x: torch.Tensor, bound: float) -> torch.Tensor:
    """x scaled down to L2 norm ``bound`` when it is longer (McMahan et al., ICLR 2018, DP-FedAvg
    clipping)."""
    norm = float(x.norm())
    return x * (bound / norm) if norm > bound else x


class SketchCompressor(Compressor):
    """Sketched FedAvg with a seeded operator per round (Song, Wang, Yu, Zhang, ICML 2023).

    Parameters
    ----------
    ratio
        s/d, used when ``sketch_dim`` is not given.
    sketch_dim
        s, the sketch length (overrides ``ratio``).
    chunk_size
        Coordinates processed at once by the operator (memory bound); results do not depend on it.
    fresh_each_round
        Draw a new R every round (the paper's iterative sketching); false keeps one R for the whole run.
    aggregate_in_sketch_space
        Average the sketches and de-sketch once (no per-client estimates for robust aggregators).
    clip_norm
        C: clip Δ to C and the sketch to g·C before noise (see the module docstring).
    noise_multiplier
        z: Gaussian noise of std z·g·C on each client's sketch; needs ``clip_norm``.
    """

    decodes_alone = True
    is_sketch = True

    operator_name: str = "sketch"

    def __init__(
        self,
        *,
        ratio: Ratio = 0.1,
        sketch_dim: PositiveInt | None = None,
        chunk_size: PositiveInt | None = None,
        fresh_each_round: bool = True,
        aggregate_in_sketch_space: bool = False,
        clip_norm: Annotated[float, Field(gt=0.0)] | None = None,
        noise_multiplier: Annotated[float, Field(ge=0.0)] = 0.0,
    ) -> None:
        if noise_multiplier > 0 and clip_norm is None:
            raise ValueError("noise_multiplier > 0 needs clip_norm (the noise is calibrated to it)")
        self.ratio, self.sketch_dim, self.chunk_size = ratio, sketch_dim, chunk_size
        self.fresh_each_round = fresh_each_round
        self.aggregates_in_sketch_space = aggregate_in_sketch_space
        self.clip_norm, self.noise_multiplier = clip_norm, noise_multiplier
        self._ops: dict[tuple[int, int], SketchOperator] = {}

    # ---- the operator of a round ----
    def _s(self, dim: int) -> int:
        return self.sketch_dim if self.sketch_dim is not None else max(1, math.ceil(self.ratio * dim))

    @abstractmethod
    def _build(self, dim: int, seed: int) -> SketchOperator:
        """The operator of this family for d = ``dim`` and the given seed."""

    def norm_gain(self, op: SketchOperator) -> float:
        """g with E‖R·x‖² = g²·‖x‖²: the factor between the input clip and the sketch-space clip."""
        return 1.0

    def operator(self, *, seed: int, server_round: int, dim: int) -> SketchOperator:
        """The round's operator, identical on every client and the server (cached for the last two)."""
        rnd = server_round if self.fresh_each_round else 0
        op_seed = derive_operator_seed(seed, rnd, self.operator_name)
        key = (op_seed, dim)
        if key not in self._ops:
            if len(self._ops) >= 2:
                self._ops.pop(next(iter(self._ops)))
            self._ops[key] = self._build(dim, op_seed)
        return self._ops[key]

    def spec(self, layout: Layout, server_round: int) -> dict[str, ArraySpec]:
        return {"sketch": ArraySpec((self._sketch_len(layout.dim),))}

    def _sketch_len(self, dim: int) -> int:
        return self._s(dim)

    def privacy_params(self) -> tuple[float, float] | None:
        """(noise_multiplier z, clip_norm C) of the per-round Gaussian mechanism on the sketch, or None.

        The sensitivity in sketch space is g·C and the noise std z·g·C (see the module docstring), so z is the
        noise multiplier an accountant should use for add/remove-one-client neighbouring.
        """
        if self.clip_norm is None or self.noise_multiplier <= 0:
            return None
        return (self.noise_multiplier, self.clip_norm)

    # ---- CLIENT SIDE ----
    def encode(self, delta: torch.Tensor, ctx: ClientContext) -> dict[str, np.ndarray]:
        x = delta.detach().to(torch.float32).cpu().reshape(-1)
        op = self.operator(seed=ctx.seed, server_round=ctx.server_round, dim=x.numel())
        if self.clip_norm is not None:
            x = clip_to_norm(x, self.clip_norm)
        y = op.sketch(x)
        if self.clip_norm is not None:
            bound = self.norm_gain(op) * self.clip_norm
            y = clip_to_norm(y, bound)
            if self.noise_multiplier > 0:
                noise = torch.randn(y.shape, generator=ctx.private_generator("sketch-dp-noise"))
                y = y + noise * (self.noise_multiplier * bound)
        return {"sketch": y.to(torch.float32).numpy()}

    # ---- SERVER SIDE ----
    def _desketch(self, op: SketchOperator, y: torch.Tensor) -> torch.Tensor:
        return op.desketch(y)

    def decode(self, payloads: list[dict[str, torch.Tensor]], ctx: RoundContext) -> torch.Tensor:
        op = self.operator(seed=ctx.seed, server_round=ctx.server_round, dim=ctx.layout.dim)
        y = torch.stack([p["sketch"].to(torch.float32).reshape(-1) for p in payloads])
        return self._desketch(op, y)

    def decode_aggregate(
        self, payloads: list[dict[str, torch.Tensor]], weights: torch.Tensor, ctx: RoundContext
    ) -> torch.Tensor:
        op = self.operator(seed=ctx.seed, server_round=ctx.server_round, dim=ctx.layout.dim)
        y = torch.stack([p["sketch"].to(torch.float32).reshape(-1) for p in payloads])
        w = weights.to(torch.float32).cpu()
        return self._desketch(op, (w / w.sum()) @ y)


@COMPRESSORS.register("gaussian_sketch")
class GaussianSketchCompressor(SketchCompressor):
    """Sketched FedAvg with a dense Gaussian R, entries N(0, 1/s) (Song, Wang, Yu, Zhang, ICML 2023).

    Costs O(s·d) time per sketch and per de-sketch (R is regenerated chunk by chunk from the seed); fine for
    small models, impractical beyond d·s ≈ 10⁹.
    """

    operator_name = "gaussian"

    def _build(self, dim: int, seed: int) -> SketchOperator:
        return GaussianSketch(dim, seed, sketch_dim=self._s(dim), chunk_size=self.chunk_size)


@COMPRESSORS.register("srht")
class SRHTCompressor(SketchCompressor):
    """Sketched FedAvg with a subsampled randomized Hadamard transform (Song, Wang, Yu, Zhang, ICML 2023).

    O(d log d) time and O(d) memory per sketch; s ≤ the padded length 2^⌈log₂ d⌉.
    """

    operator_name = "srht"

    def _build(self, dim: int, seed: int) -> SketchOperator:
        return SRHT(dim, seed, sketch_dim=self._s(dim), chunk_size=self.chunk_size)


@COMPRESSORS.register("count_sketch")
class CountSketchCompressor(SketchCompressor):
    """Sketched FedAvg with a CountSketch table (Charikar et al. 2002; sketch family of Song et al., ICML 2023).

    Parameters
    ----------
    rows
        r, the table's rows; columns are ⌈ratio·d / r⌉ unless ``cols`` is given (s = r·c).
    cols
        c, the table's columns.
    estimator
        ``"mean"``: the linear, unbiased de-sketch (mean over rows); ``"median"``: the robust median over rows
        (biased, not linear: with ``aggregate_in_sketch_space`` it is the median of the averaged table).
    ratio, chunk_size, fresh_each_round, aggregate_in_sketch_space, clip_norm, noise_multiplier
        As for :class:`SketchCompressor`; ``sketch_dim`` does not apply (s = rows·cols). The sketch-space
        clip is √rows·C.
    """  # noqa: E501  (the first line is the `privsim list` summary: kept whole)

    operator_name = "count_sketch"

    def __init__(
        self,
        *,
        rows: PositiveInt = 5,
        cols: PositiveInt | None = None,
        ratio: Ratio = 0.1,
        estimator: Literal["mean", "median"] = "mean",
        chunk_size: PositiveInt | None = None,
        fresh_each_round: bool = True,
        aggregate_in_sketch_space: bool = False,
        clip_norm: Annotated[float, Field(gt=0.0)] | None = None,
        noise_multiplier: Annotated[float, Field(ge=0.0)] = 0.0,
    ) -> None:
        super().__init__(
            ratio=ratio,
            chunk_size=chunk_size,
            fresh_each_round=fresh_each_round,
            aggregate_in_sketch_space=aggregate_in_sketch_space,
            clip_norm=clip_norm,
            noise_multiplier=noise_multiplier,
        )
        self.rows, self.cols, self.estimator = rows, cols, estimator

    def _cols(self, dim: int) -> int:
        return self.cols if self.cols is not None else max(1, math.ceil(self.ratio * dim / self.rows))

    def _sketch_len(self, dim: int) -> int:
        return self.rows * self._cols(dim)

    def _build(self, dim: int, seed: int) -> SketchOperator:
        return CountSketch(dim, seed, rows=self.rows, cols=self._cols(dim), chunk_size=self.chunk_size)

    def norm_gain(self, op: SketchOperator) -> float:
        return math.sqrt(self.rows)

    def _desketch(self, op: SketchOperator, y: torch.Tensor) -> torch.Tensor:
        assert isinstance(op, CountSketch)
        return op.estimate(y, method=self.estimator)
