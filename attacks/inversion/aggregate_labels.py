"""A cohort's label counts from the aggregated last-layer gradient (labels only, no images).

Wainakh et al., "User-Level Label Leakage from Gradients in Federated Learning", PETS 2022 (LLG), and
Geng et al., "Towards General Deep Leakage in Federated Learning", arXiv 2021 (label counts from the last
layer, for FedSGD and FedAvg).

For a last linear layer ``z = W h + b`` trained with softmax cross-entropy, the gradient of the mean loss over
N examples is

    ∇b = (1/N) Σₙ (pₙ − yₙ),          ∇W = (1/N) Σₙ (pₙ − yₙ) hₙᵀ,

and the example-weighted mean of K clients' gradients (what FedAvg, or secure aggregation, gives the server)
is the same expression over all N = Σ_k N_k examples of the cohort. Summing the one-hot labels gives the
class counts ``n_c = Σₙ y_{n,c}``:

* ``source = "bias"`` (LLG's bias form): ``n_c = N (p̄_c − ∇b_c)`` with ``p̄ = (1/N) Σₙ pₙ`` the mean softmax;
* ``source = "weight"`` (Geng et al., for a layer without bias): the row sums ``s_c = Σ_j ∇W_{c,j} =
  (1/N) Σₙ (p_{n,c} − y_{n,c}) Oₙ`` with ``Oₙ = Σ_j h_{n,j}``; taking ``Oₙ ≈ Ō``,
  ``n_c = N (E[p_c O] − s_c) / Ō``.

The server knows the model but not the inputs, so ``p̄`` (and ``E[p_c O]``, ``Ō``) are estimated on inputs
it does have (``prior``): uniform noise images (``"dummy"``, LLG's data-free variant), the attacker's public
data (``"public"``, as LLG's variants with auxiliary data), or ``p̄_c = 1/C`` (``"uniform"``, an untrained
network's output). The estimates are rounded to non-negative integers that sum to N (largest remainder).
The error of a count is ``N · |p̄_c − p̂_c|``: exact (after rounding) while the estimate of the mean softmax
is off by less than ``1 / (2N)`` per class — the case of an untrained model, whose outputs barely depend on
the input. Measured (mnist5k, MLP 784-200-200-10, 8 clients × 16 digits, FedSGD out of SecAgg+; L1 error
``Σ_c |n̂_c − n_c|`` over N = 128): untrained, ``public`` 0 (exact), ``dummy`` 4, ``uniform`` 6, the weight
form with ``public`` 8; after 300 SGD steps of pre-training, ``public`` 30 and ``dummy`` 136 (noise images
are far from the data once the model has learnt it: use public data then). On 4 clients × 4 digits the
prior ``dummy`` (the default) was exact too.

A FedAvg update is turned into the mean step gradient ``−Δ / (η · steps)``
(:func:`attacks.labels.last_layer_gradient`); the softmax moves between local steps, so counts from updates
are an approximation. The attack returns the labels (each class repeated by its count) and no images: an
empty image batch, which the evaluator scores as unmatched (mid-grey).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from attacks.base import INVERSION_ATTACKS, InversionAttack, PublicData, Reconstruction, ServerView
from attacks.labels import capture_input, last_layer_gradient, last_linear, num_images_of

__all__ = ["AggregateLabels", "count_estimates", "round_counts"]


def round_counts(est: torch.Tensor, total: int) -> torch.Tensor:
    """Non-negative integers close to ``est`` that sum to ``total`` (negative estimates clipped to 0, the rest
    rescaled to the total, then largest-remainder rounding).

    >>> round_counts(torch.tensor([2.6, 1.3, -0.2, 0.3]), 4).tolist()
    [3, 1, 0, 0]
    """
    est = est.detach().double().clamp(min=0)
    if float(est.sum()) > 0:
        est = est * (total / float(est.sum()))
    counts = est.floor().long()
    rest = total - int(counts.sum())
    if rest > 0:
        counts[torch.argsort(est - counts, descending=True)[:rest]] += 1
    return counts


def _prior_stats(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """On prior inputs ``x``: the mean softmax ``p̄`` (C,), ``E[p_c O]`` (C,) and ``Ō`` (scalar), with
    ``O = Σ_j h_j`` the sum of the last layer's input."""
    wname, _ = last_linear(model)
    layer = model.get_submodule(wname[: -len(".weight")] if "." in wname else "")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_input(layer) as seen:
            p = torch.softmax(model(x).double(), dim=1)
    finally:
        model.train(was_training)
    o = seen[0].flatten(1).double().sum(dim=1)
    return p.mean(dim=0), (p * o[:, None]).mean(dim=0), o.mean()


def count_estimates(
    view: ServerView, num_images: int, *, source: str, prior_inputs: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Real-valued class counts (C,) from the view's last-layer gradient, and what was estimated on the way.

    ``prior_inputs``: images the mean softmax is estimated on (None: ``p̄_c = 1/C``, bias form only)."""
    gw, gb = last_layer_gradient(view)
    gw, gb = gw.double().cpu(), None if gb is None else gb.double().cpu()
    num_classes = int(gw.shape[0])
    if source == "auto":
        source = "bias" if gb is not None else "weight"
    n = float(num_images)
    if source == "bias":
        if gb is None:
            raise ValueError("source = 'bias' needs a bias in the last layer; use source = 'weight'")
        if prior_inputs is None:
            pbar = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
        else:
            device = next(view.model.parameters()).device
            pbar = _prior_stats(view.model, prior_inputs.to(device))[0].cpu()
        return n * (pbar - gb), {"source": "bias", "mean_probs": pbar.tolist()}
    if source == "weight":
        if prior_inputs is None:
            raise ValueError(
                "source = 'weight' estimates E[p·O] and Ō on prior inputs: use prior 'dummy' or 'public'"
            )
        device = next(view.model.parameters()).device
        pbar, p_o, o_bar = (t.cpu() for t in _prior_stats(view.model, prior_inputs.to(device)))
        if abs(float(o_bar)) < 1e-12:
            raise ValueError("the last layer's inputs sum to 0 on the prior inputs; use source = 'bias'")
        est = n * (p_o - gw.sum(dim=1)) / o_bar
        return est, {"source": "weight", "mean_probs": pbar.tolist(), "mean_feature_sum": float(o_bar)}
    raise ValueError(f"unknown source {source!r}; known: auto, bias, weight")


@INVERSION_ATTACKS.register("aggregate_labels")
class AggregateLabels(InversionAttack):
    """Label counts of a whole cohort from the aggregated last-layer gradient (Wainakh et al., PETS 2022;
    Geng et al. 2021): ``n_c = N (p̄_c − ∇b_c)``; labels only, no images.

    Parameters
    ----------
    source
        ``"bias"`` (LLG's bias form), ``"weight"`` (Geng et al.'s row sums) or ``"auto"`` (bias when the last
        layer has one).
    prior
        Inputs the mean softmax is estimated on: ``"dummy"`` (uniform noise), ``"public"`` (the attacker's
        public data) or ``"uniform"`` (``p̄_c = 1/C``; bias form only).
    dummy_inputs
        Number of noise images (``"dummy"``) or of public images used at most (``"public"``).
    num_images
        The cohort's example count N (None: the reported ``num_examples``).
    seed
        Seed of the noise images.
    """

    works_on_aggregate = True

    def __init__(
        self,
        *,
        source: Literal["auto", "bias", "weight"] = "auto",
        prior: Literal["dummy", "public", "uniform"] = "dummy",
        dummy_inputs: Annotated[int, Field(ge=1)] = 256,
        num_images: Annotated[int, Field(ge=1)] | None = None,
        seed: int = 0,
    ) -> None:
        if prior == "uniform" and source == "weight":
            raise ValueError(
                "prior = 'uniform' gives p̄ only; source = 'weight' needs 'dummy' or 'public' inputs"
            )
        self.source, self.prior, self.dummy_inputs, self.num_images, self.seed = (
            source,
            prior,
            dummy_inputs,
            num_images,
            seed,
        )
        self.needs_public_data = prior == "public"  # the instance's need, read by the experiment
        self.public_x: torch.Tensor | None = None

    def prepare(
        self, public: PublicData | None, *, model: nn.Module, input_shape: tuple[int, ...], num_classes: int
    ) -> None:
        """Keep up to ``dummy_inputs`` public images for ``prior = "public"`` (never the victims')."""
        if self.prior != "public":
            return
        if public is None or public.x.shape[0] == 0:
            raise ValueError("aggregate_labels with prior = 'public' needs public data")
        self.public_x = public.x[: self.dummy_inputs].detach().clone()

    def _prior_inputs(self, view: ServerView) -> torch.Tensor | None:
        if self.prior == "uniform":
            return None
        if self.prior == "public":
            if self.public_x is None:
                raise RuntimeError("prior = 'public': call prepare() with public data first")
            return self.public_x
        g = torch.Generator().manual_seed(self.seed)
        return torch.rand((self.dummy_inputs, *view.input_shape), generator=g)

    def reconstruct(self, view: ServerView) -> Reconstruction:
        t0 = time.perf_counter()
        p = view.protocol
        if p.kind == "update" and not (p.lr and p.total_steps):
            raise ValueError(
                "counting needs the gradient's scale: an update's public lr and number of local steps"
            )
        n = num_images_of(view, self.num_images)
        est, facts = count_estimates(view, n, source=self.source, prior_inputs=self._prior_inputs(view))
        counts = round_counts(est, n)
        labels = torch.repeat_interleave(torch.arange(counts.numel()), counts)
        return Reconstruction(
            images=torch.empty((0, *view.input_shape)),
            labels=labels,
            info={
                "attack": "aggregate_labels",
                "label_counts": counts.tolist(),
                "count_estimates": est.tolist(),
                "num_images": n,
                "num_clients": p.num_clients,
                "prior": self.prior,
                **facts,
                "seconds": time.perf_counter() - t0,
            },
        )
