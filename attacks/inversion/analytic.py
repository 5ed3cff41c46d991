"""Analytic input recovery from the first fully connected layer (no optimisation).

Phong, Aono, Hayashi, Wang & Moriai, "Privacy-preserving deep learning via additively homomorphic
encryption", IEEE Transactions on Information Forensics and Security 13(5), 2018 (Sec. III: a
gradient of a dense layer with bias reveals its input); the same closed form is the ``analytic``
attack of breaching (Geiping, Bauermeister, Dröge & Moeller, "Inverting Gradients — How easy is it
to break privacy in federated learning?", NeurIPS 2020, and the ``breaching`` framework).

For a first layer ``u = W x + b`` that reads the flattened input ``x`` of one example,

    ∂L/∂W_i = (∂L/∂b_i) · xᵀ     for every row (neuron) i,

so any row with ``∂L/∂b_i ≠ 0`` gives ``x = (∂L/∂W_i) / (∂L/∂b_i)`` exactly. For numerical robustness
we take the least-squares combination over the rows whose ``|∂L/∂b_i|`` is not negligible (at least
``row_threshold`` times the largest one):

    x = Σ_i g_i G_i / Σ_i g_i²      (g = ∂L/∂b, G = ∂L/∂W),

the minimiser of ``Σ_i ‖G_i − g_i x‖²``. The relative residual of that rank-one fit is reported as
the attack's loss: about 1e-7 (float32 round-off) for a single example.

Protocols. A FedSGD gradient is used as is. A FedAvg update after exactly one local SGD step is
``Δ = −η g``: the ratio ``Δ_W / Δ_b`` is the same as ``G / g``, so the learning rate need not even be
known; more steps mix several weights and are refused (``ValueError``).

Labels. From the last linear layer's bias gradient ``p − y``: for one example with a hard label it
has exactly one negative entry, the true class (the argmin); for an update the sign is flipped
(``Δ_b = −η (p − y)``). Without a last-layer bias, the weight-gradient row sums are used (iDLG).

Batches of B > 1 examples. The gradient is then ``G_i = (1/B) Σ_n g_{n,i} x_nᵀ`` and the ratio is the
mixture ``Σ_n w_n x_n`` with weights ``w_n ∝ Σ_i g_i g_{n,i}`` (the examples that drive the rows the
most dominate): not any single input. This attack returns that gradient-weighted mixture, repeated
once per example so that the evaluator can pair it with every true image, with ``info["mixture"] =
True`` and a large rank-one residual; the B most negative bias-gradient entries serve as labels.
"""

from __future__ import annotations

import math
import time
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from attacks.base import INVERSION_ATTACKS, InversionAttack, Reconstruction, ServerView
from attacks.inversion._common import first_layer_input
from attacks.labels import last_linear
from simulator.flat import layout_of, unflatten

__all__ = [
    "AnalyticFC",
    "analytic_input",
    "first_linear_layer",
    "last_layer_labels",
    "payload_parts",
    "payload_scale",
]


def first_linear_layer(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """Module name of the model's first parameterised layer, checked to be an ``nn.Linear`` with bias that
    receives the raw flattened input.

    The layer that runs first is found with forward pre-hooks on a probe input (registration order need
    not be execution order); its input must equal the probe flattened.

    Raises
    ------
    ValueError
        When the first parameterised layer is not a biased ``nn.Linear``, or when it does not see the raw
        input (a normalisation or another transform runs before it).
    """
    name, mod, raw = first_layer_input(model, input_shape, "analytic_fc")
    if not isinstance(mod, nn.Linear) or mod.bias is None:
        kind = type(mod).__name__ + ("" if not isinstance(mod, nn.Linear) else " without bias")
        raise ValueError(
            f"analytic_fc needs the model's first parameterised layer to be an nn.Linear with "
            f"bias on the flattened input; the first layer {name!r} is a {kind} (use an "
            f"optimisation attack such as inverting_gradients for this model)"
        )
    if not raw:
        raise ValueError(
            f"analytic_fc: the first linear layer {name!r} does not receive the raw flattened "
            f"input (something transforms the input before it)"
        )
    return name


def payload_scale(view: ServerView) -> float:
    """Factor that turns the payload into the gradient up to a positive scale: 1 for a gradient; for a
    one-step update ``Δ = −η g``, ``−1/η`` when η is public, else ``−1`` (the sign only).

    Raises
    ------
    ValueError
        For a sketched payload, an unknown protocol, or an update behind more (or an unknown number of)
        local steps.
    """
    if view.sketch is not None:
        raise ValueError("analytic attacks read a plain payload; de-sketch it first")
    kind = view.protocol.kind
    if kind == "gradient":
        return 1.0
    if kind == "update":
        steps = view.protocol.total_steps
        if steps != 1:
            raise ValueError(
                f"analytic attacks need a FedSGD gradient or an update after exactly one local SGD "
                f"step (Δ = −η·g); this update has {steps if steps is not None else 'an unknown number of'}"
                f" local steps"
            )
        lr = view.protocol.lr
        return -1.0 / float(lr) if lr else -1.0
    raise ValueError(f"unknown protocol kind {kind!r}; known: gradient, update")


def payload_parts(view: ServerView) -> dict[str, torch.Tensor]:
    """The payload unflattened per :func:`simulator.flat.layout_of` of the view's model, in float64."""
    return dict(unflatten(view.payload.detach().double(), layout_of(view.model)))


def analytic_input(
    grad_weight: torch.Tensor, grad_bias: torch.Tensor, *, row_threshold: float = 1e-6
) -> tuple[torch.Tensor, int, float]:
    """Closed-form input of a dense layer from its weight and bias gradients.

    Parameters
    ----------
    grad_weight
        ``∂L/∂W`` of shape (H, D) (or any positive or negative multiple of it, e.g. an update).
    grad_bias
        ``∂L/∂b`` of shape (H,), scaled like ``grad_weight``.
    row_threshold
        Rows with ``|∂L/∂b_i| ≤ row_threshold · max_i |∂L/∂b_i|`` are left out.

    Returns
    -------
    x : torch.Tensor
        The least-squares input ``Σ g_i G_i / Σ g_i²`` of shape (D,), float64.
    rows : int
        How many rows were used.
    residual : float
        ``‖G − g xᵀ‖ / ‖G‖`` over the rows used (≈ 0 for one example, large for a mixture).
    """
    gw, gb = grad_weight.detach().double(), grad_bias.detach().double()
    if gw.ndim != 2 or gb.ndim != 1 or gw.shape[0] != gb.shape[0]:
        raise ValueError(
            f"expected a (H, D) weight gradient and a (H,) bias gradient, got {tuple(gw.shape)} "
            f"and {tuple(gb.shape)}"
        )
    top = float(gb.abs().max()) if gb.numel() else 0.0
    if not math.isfinite(top) or top == 0.0:
        raise ValueError(
            "the first layer's bias gradient is zero (or not finite): there is nothing to invert"
        )
    rows = gb.abs() > row_threshold * top
    g, G = gb[rows], gw[rows]
    x = (g @ G) / (g @ g)
    fit = G - g[:, None] * x[None, :]
    residual = float(fit.norm() / G.norm().clamp_min(1e-300))
    return x, int(rows.sum()), residual


def last_layer_labels(
    view: ServerView, parts: dict[str, torch.Tensor], scale: float, num: int
) -> torch.Tensor:
    """The ``num`` classes with the most negative last-layer bias gradient (row sums without a bias),
    sorted."""
    wname, bname = last_linear(view.model)
    score = parts[bname] if bname is not None else parts[wname].sum(1)
    score = score * scale
    return torch.argsort(score)[:num].sort().values.long()


@INVERSION_ATTACKS.register("analytic_fc")
class AnalyticFC(InversionAttack):
    """Exact input recovery from the first dense layer's weight/bias gradient ratio (Phong et al., IEEE TIFS
    2018; breaching's analytic attack); batch 1, gradient or one-step update.

    Parameters
    ----------
    row_threshold
        Rows with ``|∂L/∂b_i|`` at most this fraction of the largest are left out of the least-squares ratio.
    num_images
        How many images the payload covers (default: the client's reported count or the batch size); with more
        than one, the gradient-weighted mixture is returned once per image.
    """

    def __init__(
        self,
        *,
        row_threshold: Annotated[float, Field(ge=0, lt=1)] = 1e-6,
        num_images: Annotated[int, Field(ge=1)] | None = None,
    ) -> None:
        self.row_threshold, self.num_images = row_threshold, num_images

    def reconstruct(self, view: ServerView) -> Reconstruction:
        t0 = time.perf_counter()
        scale = payload_scale(view)
        name = first_linear_layer(view.model, view.input_shape)
        parts = payload_parts(view)
        prefix = f"{name}." if name else ""
        x, rows, residual = analytic_input(
            parts[prefix + "weight"], parts[prefix + "bias"], row_threshold=self.row_threshold
        )
        p = view.protocol
        n = self.num_images or p.num_examples or p.batch_size or 1
        if p.kind == "update" and p.batch_size:
            n = min(n, p.batch_size)  # one step sees one mini-batch
        labels = last_layer_labels(view, parts, scale, n)
        device = view.payload.device
        img = x.float().reshape(1, *view.input_shape).to(device)
        images = img.expand(n, *view.input_shape).clamp(0, 1).clone()
        return Reconstruction(
            images=images,
            labels=labels.to(device),
            losses=(residual,),
            info={
                "attack": "analytic_fc",
                "layer": name,
                "rows_used": rows,
                "rows_total": int(parts[prefix + "bias"].numel()),
                "residual": residual,
                "mixture": n > 1,
                "seconds": time.perf_counter() - t0,
            },
        )
