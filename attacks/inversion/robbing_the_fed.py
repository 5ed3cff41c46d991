"""Robbing the Fed (Fowl, Geiping, Czaja, Goldblum & Goldstein, "Robbing the Fed: Directly Obtaining
Private Data in Federated Learning with Modified Models", ICLR 2022).

A malicious server puts an *imprint block* in front of the model it sends:

1. a linear layer ``ℝ^D → ℝ^K`` whose K rows all equal one *measurement* vector ``w`` (the mean
   brightness ``w = 1/D``, or a seeded random unit direction) and whose biases are the negated bin
   offsets ``o_0 < o_1 ≤ … ≤ o_{K−1}``, so unit i computes ``h_i = w·x − o_i``;
2. a ReLU: unit i is active for every image whose measurement exceeds ``o_i``;
3. a linear layer ``ℝ^K → ℝ^D`` back to the input, whose columns are all equal.

For an active unit, ``∂L/∂W_i = Σ_{j: w·x_j > o_i} c_j x_j`` and ``∂L/∂b_i = Σ_{j: w·x_j > o_i} c_j``, where
``c_j = ∂L/∂h_i`` for image j is the same for every unit i because the back-projection's columns are
equal. Rows are cumulative in i, so with the offsets sorted, ``(∂W_i − ∂W_{i+1}) / (∂b_i − ∂b_{i+1}) = x_j``
exactly when image j is the only one whose measurement falls in ``(o_i, o_{i+1}]``; a
bin that caught two images gives their mixture weighted by ``c_j``. The server places the offsets at
equal-mass quantiles of the measurement's distribution, estimated on public data (the paper uses the
measurement's CDF; ``placement = "gaussian"`` fits a normal distribution instead), so that a batch of B
images spreads over the K bins and most bins hold at most one image.

The back-projection is our choice: the recovery only needs its columns to be equal, and breaching's
``connection = "linear"`` hands the original model a constant image (the sum of the bin activations).
Here the block is *residual*, ``x ↦ x + V·ReLU(W x + b) + v₀``, with every entry of ``V`` equal to
``gain / (scale · K)`` and ``v₀`` cancelling the mean shift on the public data. The original model then
receives the image plus a constant of at most ``gain · (w·x − o_0)`` per pixel: the modified model still
classifies like the honest one (the client notices nothing in its loss or accuracy), while the
imprint rows still get exactly ``c_j x_j``. ``scale`` multiplies the measurement rows and offsets; a
small scale makes the imprint gradient large next to the imprint weights, so a FedAvg update
``Δ = w_local − w_global`` keeps the gradient's digits in float32.

Loudness. What the original model sees, ``gain/K · Σ_i ReLU(w·x − o_i)``, does not depend on ``scale``;
the imprint gradient does: ``c_j = gain / (scale · K) · (1/B) · Σ_pixels ∂ℓ_j/∂(model input)``. This is
breaching's ``gain`` (``ImprintBlock``: measurement rows and biases times ``gain``, back-projection times
``1/gain``, "dampen layer to reduce gradient magnitude"; its Robbing-the-Fed config uses 1, i.e.
``c_j = (1/B) Σ_pixels ∂ℓ_j/∂out``), not ours: our ``gain`` is the size of the residual perturbation. A
loud imprint matters wherever the payload carries an *absolute* error: SecAgg+ quantises every
coordinate to a step of ``2 · clipping_range / quantization_range`` (3.8e-6 with Flower's defaults), and
a bin is read as ``(∂W_i − ∂W_{i+1}) / (∂b_i − ∂b_{i+1})``, so ``c_j`` must be some 100 steps for 40 dB.
With ``scale = 1e-2`` and ``gain = 1e-2`` (``gain / (scale · K) ≈ 0.008`` at 128 bins, imprint gradients
~1e-5) 16 clients × 4 mnist5k digits gave 0 of 64 digits through SecAgg+; ``scale = 1e-4`` (≈ 0.8, about
breaching's factor 1) 42 of 64 (0.66; 43 without secure aggregation), and ``gain = 1`` with
``scale = 1e-2`` 40 of 64, but it moves the model's outputs 100 times more. The default
``scale`` is therefore ``1e-4``: the server crafts the model before any payload exists (the
:class:`ServerView` with ``protocol.aggregate`` comes afterwards), so one default has to serve a single
client's payload and a secure aggregate alike, and a loud imprint costs nothing in either. The exception
is ``multi_step = True``: between local steps the offsets move by ``η · ∂L/∂b_i / scale`` in
measurement units, which grows as ``gain / scale²``, so loud bins smear (measured on the 4-step update of
``scenarios/inversion_defense_pipeline.toml``: 0.03 of 64 digits at ``scale = 1e-4`` against 0.22 at
``1e-2``); there the default stays ``1e-2`` (quiet: a multi-step update through SecAgg+ asks for an
explicit choice between the two).

Scale-free: the ratio is unchanged by the loss's batch mean or by the learning rate, so a one-step
update ``Δ = −η ∇θ L`` works as a gradient does. With several local steps (FedAvg) every image still
imprints ``x_j`` times a scalar on the rows of its bins at each step, but the imprint weights and the
back-projection move between steps, so bins are exact only while they barely move; the attack refuses
such updates unless ``multi_step = True`` (then it reads them the same way, as an approximation).
"""

from __future__ import annotations

import copy
import math
import time
from statistics import NormalDist
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from attacks.base import INVERSION_ATTACKS, InversionAttack, PublicData, Reconstruction, ServerView
from attacks.labels import LabelStrategy, recover_labels
from simulator.flat import layout_of, unflatten

__all__ = [
    "ENCODER_BIAS",
    "ENCODER_WEIGHT",
    "ImprintBlock",
    "ImprintedModel",
    "RobbingTheFed",
    "bin_offsets",
    "measurement_vector",
]

#: state-dict names of the imprint layer in the model :meth:`RobbingTheFed.server_model` returns
ENCODER_WEIGHT = "imprint.encoder.weight"
ENCODER_BIAS = "imprint.encoder.bias"


def measurement_vector(dim: int, *, kind: str, seed: int = 0) -> torch.Tensor:
    """The linear measurement ``m(x) = w·x`` of a flattened image (float64, shape (dim,)).

    ``"brightness"``: the mean pixel, ``w = 1/dim``. ``"random"``: a unit-norm Gaussian direction drawn
    from ``seed``.

    >>> measurement_vector(4, kind="brightness").tolist()
    [0.25, 0.25, 0.25, 0.25]
    """
    if kind == "brightness":
        return torch.full((dim,), 1.0 / dim, dtype=torch.float64)
    if kind == "random":
        z = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return z / z.norm()
    raise ValueError(f"unknown measurement {kind!r}; known: brightness, random")


def bin_offsets(values: torch.Tensor, bins: int, *, placement: str, lower_bound: float) -> torch.Tensor:
    """Sorted bin offsets ``o_0 < o_1 ≤ … ≤ o_{K−1}`` for measurements ``values`` of public data.

    ``o_i`` for ``i ≥ 1`` is the ``i/K`` quantile of the measurement, either the empirical one
    (``"quantile"``, the paper's CDF placement) or that of a fitted normal distribution (``"gaussian"``);
    each of the K bins ``(o_i, o_{i+1}]`` (the last one open) then holds a 1/K share of the public data.
    ``o_0`` lies below ``lower_bound`` (the least measurement any input can have), so every input
    activates unit 0 and falls into exactly one bin.

    >>> bin_offsets(torch.arange(1.0, 9.0), 4, placement="quantile", lower_bound=0.0).tolist()
    [-7.0, 2.75, 4.5, 6.25]
    """
    v = values.detach().double().flatten()
    if v.numel() < 2:
        raise ValueError("bin calibration needs at least two public measurements")
    probs = torch.arange(1, bins, dtype=torch.float64) / bins
    if placement == "quantile":
        inner = torch.quantile(v, probs)
    elif placement == "gaussian":
        mu, sd = float(v.mean()), float(v.std())
        nd = NormalDist(mu, max(sd, 1e-12))
        inner = torch.tensor([nd.inv_cdf(float(p)) for p in probs], dtype=torch.float64)
    else:
        raise ValueError(f"unknown bin placement {placement!r}; known: quantile, gaussian")
    spread = max(float(v.max() - v.min()), 1e-6)
    first = min(lower_bound, float(v.min())) - spread
    return torch.cat([torch.tensor([first], dtype=torch.float64), inner])


class ImprintBlock(nn.Module):
    """``x ↦ x + V ReLU(W x + b) + v₀`` for flattened x: K identical measurement rows ``W`` with biases
    ``−scale·offsets``, and a back-projection ``V`` with identical columns (see the module docstring)."""

    def __init__(
        self,
        *,
        measurement: torch.Tensor,
        offsets: torch.Tensor,
        input_shape: tuple[int, ...],
        scale: float,
        gain: float,
        center: float,
    ) -> None:
        super().__init__()
        dim, bins = int(measurement.numel()), int(offsets.numel())
        if dim != math.prod(input_shape):
            raise ValueError(f"measurement of length {dim} for inputs of shape {input_shape}")
        self.input_shape = tuple(input_shape)
        with torch.random.fork_rng(devices=[]):  # the default init is overwritten: leave the global RNG alone
            self.encoder = nn.Linear(dim, bins)
            self.decoder = nn.Linear(bins, dim)
        with torch.no_grad():
            self.encoder.weight.copy_((scale * measurement).to(torch.float32).expand(bins, dim))
            self.encoder.bias.copy_((-scale * offsets).to(torch.float32))
            self.decoder.weight.fill_(gain / (scale * bins))
            self.decoder.bias.fill_(-gain * center / bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.encoder(x.flatten(1)))
        return x + self.decoder(h).view_as(x)


class ImprintedModel(nn.Module):
    """The model a Robbing-the-Fed server sends: ``model(imprint(x))``."""

    def __init__(self, imprint: ImprintBlock, model: nn.Module) -> None:
        super().__init__()
        self.imprint = imprint
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.imprint(x))


@INVERSION_ATTACKS.register("robbing_the_fed")
class RobbingTheFed(InversionAttack):
    """Robbing the Fed (Fowl et al., ICLR 2022): a malicious server's imprint block; exact recovery of
    every image alone in its bin from one gradient (or one-step update).

    Parameters
    ----------
    bins
        Number K of imprint units (bins).
    measurement
        ``"brightness"`` (mean pixel) or ``"random"`` (a unit Gaussian direction drawn from ``seed``).
    placement
        Bin offsets at equal-mass quantiles of the public measurement (``"quantile"``, the paper's CDF)
        or of a normal distribution fitted to it (``"gaussian"``).
    scale
        Factor on the measurement rows and offsets (small: imprint gradients large next to the weights and
        loud above SecAgg+'s quantisation, see "Loudness" in the module docstring); None: ``1e-4``, or
        ``1e-2`` with ``multi_step`` (bins that move less between local steps).
    gain
        Size of the residual perturbation the original model sees (per pixel, in measurement ranges).
    min_bias_share
        A bin counts as hit when its bias-gradient difference exceeds this share of the largest one.
    dedupe_db
        Drop a candidate closer than this PSNR to a stronger one (None: keep all).
    trim_to_batch
        Keep at most ``num_examples`` candidates (those with the largest bias-gradient differences).
    label_strategy
        Batch labels from the last layer (:mod:`attacks.labels`), or None for no labels.
    multi_step
        Also read updates of several local steps (an approximation, see the module docstring).
    seed
        Seed of the random measurement.
    """

    malicious_server = True
    needs_public_data = True
    #: designed for secure aggregation: the imprint rows of the clients' sum are still cumulative bins, so an
    #: image alone in its bin across the whole cohort is recovered from the aggregate (Fowl et al.)
    works_on_aggregate = True

    def __init__(
        self,
        *,
        bins: Annotated[int, Field(ge=2)] = 128,
        measurement: Literal["brightness", "random"] = "brightness",
        placement: Literal["quantile", "gaussian"] = "quantile",
        scale: Annotated[float, Field(gt=0)] | None = None,
        gain: Annotated[float, Field(gt=0)] = 1e-2,
        min_bias_share: Annotated[float, Field(ge=0, lt=1)] = 1e-4,
        dedupe_db: Annotated[float, Field(gt=0)] | None = 80.0,
        trim_to_batch: bool = True,
        label_strategy: LabelStrategy | None = None,
        multi_step: bool = False,
        seed: int = 0,
    ) -> None:
        self.bins, self.measurement, self.placement = bins, measurement, placement
        self.scale: float = scale if scale is not None else (1e-2 if multi_step else 1e-4)
        self.gain, self.min_bias_share = gain, min_bias_share
        self.dedupe_db, self.trim_to_batch, self.label_strategy = dedupe_db, trim_to_batch, label_strategy
        self.multi_step, self.seed = multi_step, seed
        self.offsets: torch.Tensor | None = None
        self.vector: torch.Tensor | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.center = 0.0

    def prepare(
        self, public: PublicData | None, *, model: nn.Module, input_shape: tuple[int, ...], num_classes: int
    ) -> None:
        """Calibrate the bin offsets on the public images (never the victim's)."""
        if public is None or public.x.shape[0] < 2:
            raise ValueError(
                "robbing_the_fed calibrates its bins on public data: give it at least two images"
            )
        if tuple(public.x.shape[1:]) != tuple(input_shape):
            raise ValueError(
                f"public images {tuple(public.x.shape[1:])} do not match the input shape {input_shape}"
            )
        dim = math.prod(input_shape)
        w = measurement_vector(dim, kind=self.measurement, seed=self.seed)
        values = public.x.detach().double().flatten(1) @ w
        lower = float(w.clamp(max=0).sum())  # min of w·x over the box [0, 1]^D
        self.offsets = bin_offsets(values, self.bins, placement=self.placement, lower_bound=lower)
        self.vector, self.input_shape = w, tuple(input_shape)
        self.center = float(torch.relu(values[:, None] - self.offsets[None, :]).sum(1).mean())

    def server_model(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` behind the imprint block (parameters ``imprint.*`` then ``model.*``)."""
        if self.offsets is None or self.vector is None or self.input_shape is None:
            raise RuntimeError("call prepare() with public data before server_model()")
        inner = copy.deepcopy(model)
        ref = next(inner.parameters(), None)
        block = ImprintBlock(
            measurement=self.vector,
            offsets=self.offsets,
            input_shape=self.input_shape,
            scale=self.scale,
            gain=self.gain,
            center=self.center,
        )
        if ref is not None:
            block = block.to(device=ref.device, dtype=ref.dtype)
        return ImprintedModel(block, inner)

    def reconstruct(self, view: ServerView) -> Reconstruction:
        t0 = time.perf_counter()
        if view.sketch is not None:
            raise ValueError("robbing_the_fed reads the imprint rows of a plain payload, not a raw sketch")
        kind, steps = view.protocol.kind, view.protocol.total_steps
        if kind not in ("gradient", "update"):
            raise ValueError(f"unknown protocol kind {kind!r}")
        if kind == "update" and steps != 1 and not self.multi_step:
            raise ValueError(
                f"robbing_the_fed is exact for a gradient or a one-step update; this update spans "
                f"{'an unknown number of' if steps is None else steps} local steps (set "
                "multi_step = true to read it anyway, as an approximation)"
            )
        layout = layout_of(view.model)
        if ENCODER_WEIGHT not in layout.names or ENCODER_BIAS not in layout.names:
            raise ValueError(
                f"the model in the ServerView has no imprint layer ({ENCODER_WEIGHT!r}); a malicious "
                "server must send RobbingTheFed.server_model(model)"
            )
        parts = unflatten(view.payload.detach().double().cpu(), layout)
        bias = view.model.state_dict()[ENCODER_BIAS].detach().double().cpu()
        order = torch.argsort(bias, descending=True)  # bias = −scale·offset: offsets ascending
        gw, gb = parts[ENCODER_WEIGHT][order], parts[ENCODER_BIAS][order]
        gw = torch.cat([gw, torch.zeros_like(gw[:1])])
        gb = torch.cat([gb, torch.zeros_like(gb[:1])])
        dw, db = gw[:-1] - gw[1:], gb[:-1] - gb[1:]  # bin i: images with o_i < m ≤ o_{i+1}
        top = float(db.abs().max()) if db.numel() else 0.0
        hit = torch.isfinite(db) & (db.abs() > self.min_bias_share * top) & (top > 0)
        idx = torch.nonzero(hit).flatten()
        idx = idx[torch.argsort(db[idx].abs(), descending=True)]  # strongest bins first
        cand = (dw[idx] / db[idx, None]).clamp(0, 1)
        keep = self._dedupe(cand)
        cand, idx = cand[keep], idx[keep]
        n = view.protocol.num_examples
        if self.trim_to_batch and n is not None and cand.shape[0] > n:
            cand, idx = cand[:n], idx[:n]
        images = cand.to(torch.float32).reshape(-1, *view.input_shape)
        labels = None
        if self.label_strategy is not None:
            labels = recover_labels(view, strategy=self.label_strategy)
        return Reconstruction(
            images=images,
            labels=labels,
            info={
                "attack": "robbing_the_fed",
                "bins": int(gb.numel() - 1),
                "bins_hit": int(hit.sum()),
                "candidates": int(images.shape[0]),
                "bin_indices": [int(i) for i in idx],
                "measurement": self.measurement,
                "placement": self.placement,
                "scale": self.scale,
                "exact": kind == "gradient" or steps == 1,
                "seconds": time.perf_counter() - t0,
            },
        )

    def _dedupe(self, cand: torch.Tensor) -> torch.Tensor:
        """Indices of candidates kept: each dropped one is within ``dedupe_db`` PSNR of a kept earlier one."""
        if self.dedupe_db is None or cand.shape[0] < 2:
            return torch.arange(cand.shape[0])
        max_mse = 10.0 ** (-self.dedupe_db / 10.0)
        d = torch.cdist(cand, cand).pow(2) / cand.shape[1]
        kept: list[int] = []
        for i in range(cand.shape[0]):
            if not kept or bool((d[i, kept] > max_mse).all()):
                kept.append(i)
        return torch.as_tensor(kept, dtype=torch.long)
