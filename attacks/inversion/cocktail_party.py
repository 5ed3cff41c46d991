"""Cocktail Party Attack (Kariyappa, Guo, Maeng, Xiong, Suh, Qureshi & Lee, "Cocktail Party Attack: Breaking
Aggregation-Based Privacy in Federated Learning using Independent Component Analysis", ICML 2023).

The gradient of a fully connected layer ``u = W x + b`` that reads the flattened input, summed (or averaged)
over every example of every client in an aggregate, is

    ∇W = Σ_i a_i x_iᵀ = A X      (m × n),        ∇b = Σ_i a_i = A 1,

with ``a_i = ∂L/∂u`` for example i (scaled by the averaging). Each row of ∇W is a linear *mixture* of the B
inputs: recovering them is blind source separation, the cocktail-party problem, and the paper solves it with
independent component analysis (ICA): centre and whiten the rows, then find the unmixing matrix whose
outputs are as non-Gaussian as possible (negentropy ``J(y) ≈ (E G(y) − E G(ν))²``, ``G = log cosh`` in the
paper, ν a standard normal), plus a total-variation prior on the recovered images and a soft
mutual-independence (decorrelation) penalty ``exp(T·|cos(u_i, u_j)|)`` between unmixing rows, optimised
with gradient descent.
Secure aggregation does not help: the server only ever needs the sum.

What is implemented here, step by step (``reconstruct``):

1. **Observations.** ``∇W`` and ``∇b`` of the model's first ``nn.Linear`` on the flattened input (the
   registered ``mlp``; other models are refused, see :func:`first_dense_layer`). With ``domain =
   "gradients"`` (default) ICA runs on the rows' horizontal and vertical finite differences: a linear filter
   applied to every row keeps the mixing matrix, and image gradients are sparse (strongly non-Gaussian) and
   far less correlated between two images than the images themselves — the paper's TV prior (sparse gradients)
   turned into the contrast itself. ``domain = "pixels"`` is the paper's plain setting. Measured on 16 mnist5k
   digits (4 clients × 4, FedSGD, SecAgg+, untrained MLP 784-200-200-10; mean of 3 seeds): FastICA alone
   (log cosh) gives 11.6 dB mean PSNR on pixels and 27.4 dB on gradients; as baselines, the batch-mean image
   scores 12.1 dB and mid-grey 6.4 dB (one of the seeds).
2. **Whitening.** Rows centred over their entries, PCA to ``k = min(B, m, n)`` components (B from the
   reported ``num_examples``: ICA needs the number of sources).
3. **FastICA** (Hyvärinen, "Fast and robust fixed-point algorithms for independent component analysis",
   IEEE TNN 1999): the symmetric fixed-point iteration ``w⁺ = E[z g(wᵀz)] − E[g'(wᵀz)] w`` with symmetric
   decorrelation ``W ← (W Wᵀ)^{-1/2} W`` (``g = tanh`` for log cosh, or the Gaussian ``exp`` contrast),
   from a seeded random orthogonal start. It forces the sources to be exactly uncorrelated.
4. **Refinement** (``refine_iterations`` Adam steps on the unmixing matrix, rows normalised): the paper's
   objective ``−mean_i J(u_i z) + λ_MI · mean_{i≠j} (exp(T |cos(u_i, u_j)|) − 1) + λ_TV · TV(x̂)``, which lets
   correlated sources (two digits overlap) leave the orthogonal solution, plus our box prior
   ``λ_box · mean(relu(−x̂) + relu(x̂ − 1))`` on the bias-normalised images (step 5): true images lie in
   [0, 1], mixtures with negative weights do not. Measured on the same digits: 27.4 → 33.7 dB with log cosh
   and λ_MI = 1e-2, 39.2 dB with the ``exp`` contrast and λ_MI = 1e-3 (the defaults; λ_TV = 0, the
   gradient-domain contrast already is a TV prior, and 0.01 lowered it to 37.8 dB); FedAvg updates (3 local
   steps of batch 2) 39.1 dB; 32 digits (8 clients × 4) 33.0 dB. 1000 steps take 1.5-3 s on one CPU thread.
5. **Sign and scale.** ICA recovers sources up to sign and scale. The paper min-max normalises each image to
   [0, 1]. With a first-layer bias we do better (our addition): the unmixing row r that gives source
   ``r ∇W = d x_j`` gives ``r ∇b = d`` (``∇b = A 1``), so ``x_j = (r ∇W) / (r ∇b)`` exactly — Phong et al.'s
   ratio ``∇W_i / ∇b_i`` per *source* instead of per row. Imperfectly separated, the ratio is an affine
   combination of the inputs (weights summing to 1). Without a bias (``scaling = "minmax"``) each source is
   min-max normalised with the sign of positive skewness (bright strokes on a dark ground; a data-free
   heuristic of ours, not the paper's).

Protocols. A FedSGD gradient (one client's, or the example-weighted mean of K clients', in the clear or out
of secure aggregation) is a mixture as above. So is a FedAvg update Δ = w_local − w_global after any number
of local SGD steps, without weight decay: the first layer's input never changes, so ``Δ_W = Σ_i ã_i x_iᵀ``
and ``Δ_b = Σ_i ã_i`` with ``ã_i`` summed over the steps — the bias ratio stays exact.

Limits: ICA recovers at most ``min(m, n)`` sources (``m`` the first layer's width); sources that are not
independent (similar images, repeated inputs) mix; the reported ``num_examples`` must be right. The paper's
second stage for CNNs (recover the embeddings of a dense layer, then feature inversion) is not implemented.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from attacks.base import INVERSION_ATTACKS, InversionAttack, Reconstruction, ServerView
from attacks.inversion._common import first_layer_input, total_variation
from attacks.labels import LabelStrategy, num_images_of, recover_labels
from attacks.progress import steps
from simulator.flat import layout_of, unflatten

__all__ = [
    "CocktailParty",
    "fastica",
    "first_dense_layer",
    "gaussian_contrast_mean",
    "negentropy",
    "spatial_differences",
    "whiten",
]

Contrast = Literal["logcosh", "exp"]


def first_dense_layer(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[str, bool]:
    """``(module name, has bias)`` of the model's first parameterised layer, checked to be an ``nn.Linear``
    that receives the raw flattened input (found with forward pre-hooks on a probe input).

    Raises
    ------
    ValueError
        When the first parameterised layer is not an ``nn.Linear`` (a CNN: its first layer is a convolution)
        or does not see the raw input.
    """
    name, mod, raw = first_layer_input(model, input_shape, "cocktail_party")
    if not isinstance(mod, nn.Linear):
        raise ValueError(
            f"cocktail_party needs a model whose first layer is fully connected on the flattened "
            f"image (the registered 'mlp'); the first parameterised layer {name!r} is a "
            f"{type(mod).__name__} (the paper's CNN variant, embeddings + feature inversion, is not "
            f"implemented; use inverting_gradients on this model)"
        )
    if not raw:
        raise ValueError(
            f"cocktail_party: the first linear layer {name!r} does not receive the raw flattened "
            f"input (something transforms the input before it)"
        )
    return name, mod.bias is not None


def spatial_differences(rows: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Every row (a flattened (C, H, W) image) replaced by its horizontal then vertical finite differences,
    concatenated: ``(m, C·H·(W−1) + C·(H−1)·W)``. Linear, so a mixture of images becomes the same mixture
    of their gradients."""
    img = rows.reshape(rows.shape[0], *input_shape)
    dx = (img[..., :, 1:] - img[..., :, :-1]).flatten(1)
    dy = (img[..., 1:, :] - img[..., :-1, :]).flatten(1)
    return torch.cat([dx, dy], dim=1)


def whiten(y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre the rows of ``y`` (m, n) over their entries and whiten them to ``k`` components by PCA.

    Returns ``(z, w, s)``: the whitened data ``z = w (y − ȳ)`` (k, n) with ``z zᵀ / (n − 1) = I``, the
    whitening matrix ``w`` (k, m) and the singular values of the centred ``y`` (all of them)."""
    yc = y - y.mean(dim=1, keepdim=True)
    u, s, _ = torch.linalg.svd(yc, full_matrices=False)
    if k > s.numel():
        raise ValueError(f"cannot whiten to {k} components: the data has rank at most {s.numel()}")
    tiny = torch.finfo(s.dtype).tiny
    w = math.sqrt(max(y.shape[1] - 1, 1)) * (u[:, :k] / s[:k].clamp_min(tiny)).T
    return w @ yc, w, s


def _sym_decorrelation(w: torch.Tensor) -> torch.Tensor:
    """``(W Wᵀ)^{-1/2} W``: the nearest matrix with orthonormal rows."""
    s, u = torch.linalg.eigh(w @ w.T)
    return (u * s.clamp_min(torch.finfo(s.dtype).tiny).rsqrt()) @ u.T @ w


def _contrast(y: torch.Tensor, contrast: str) -> torch.Tensor:
    """The FastICA contrast ``G(y)``: ``log cosh y`` (in the overflow-free form
    ``|y| + log1p(e^{−2|y|}) − log 2``) or ``−exp(−y²/2)``."""
    if contrast == "logcosh":
        a = y.abs()
        return a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)
    if contrast == "exp":
        return -torch.exp(-0.5 * y * y)
    raise ValueError(f"unknown contrast {contrast!r}; known: logcosh, exp")


def _contrast_derivatives(y: torch.Tensor, contrast: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``g = G'`` and ``g'`` of the FastICA contrast."""
    if contrast == "logcosh":
        t = torch.tanh(y)
        return t, 1 - t * t
    if contrast == "exp":
        e = torch.exp(-0.5 * y * y)
        return y * e, (1 - y * y) * e
    raise ValueError(f"unknown contrast {contrast!r}; known: logcosh, exp")


def gaussian_contrast_mean(contrast: str) -> float:
    """``E G(ν)`` for a standard normal ν (80-point Gauss-Hermite quadrature): 0.3746 for log cosh, −1/√2 for
    exp.

    >>> round(gaussian_contrast_mean("exp"), 6) == round(-1 / math.sqrt(2), 6)
    True
    """
    x, w = np.polynomial.hermite.hermgauss(80)
    g = _contrast(math.sqrt(2.0) * torch.from_numpy(x), contrast)
    return float((torch.from_numpy(w) * g).sum()) / math.sqrt(math.pi)


def negentropy(y: torch.Tensor, contrast: str, gaussian_mean: float) -> torch.Tensor:
    """Per-row negentropy approximation ``(E G(y) − E G(ν))²`` of unit-variance rows ``y`` (k, n)."""
    return (_contrast(y, contrast).mean(dim=1) - gaussian_mean) ** 2


def fastica(
    z: torch.Tensor,
    *,
    contrast: str = "logcosh",
    max_iter: int = 1000,
    tol: float = 1e-8,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int, bool]:
    """Symmetric FastICA on whitened data ``z`` (k, n): the unmixing matrix ``W`` (k, k, orthonormal rows)
    with sources ``W z``, the iterations run, and whether it converged (``max |1 − |diag(W⁺ Wᵀ)|| < tol``)."""
    k, n = z.shape
    w = _sym_decorrelation(torch.randn(k, k, generator=generator, dtype=torch.float64).to(z))
    for it in range(1, max_iter + 1):
        g, gp = _contrast_derivatives(w @ z, contrast)
        w1 = _sym_decorrelation(g @ z.T / n - gp.mean(dim=1)[:, None] * w)
        lim = float((torch.einsum("ij,ij->i", w1, w).abs() - 1).abs().max())
        w = w1
        if lim < tol:
            return w, it, True
    return w, max_iter, False


@INVERSION_ATTACKS.register("cocktail_party")
class CocktailParty(InversionAttack):
    """Cocktail Party Attack (Kariyappa et al., ICML 2023): ICA on the aggregated first-layer gradient of an
    MLP separates the cohort's inputs; sign and scale from the bias gradient.

    Parameters
    ----------
    domain
        ``"gradients"``: ICA on the rows' spatial finite differences (sparse, less correlated; default);
        ``"pixels"``: on the rows themselves (the paper's setting).
    contrast
        FastICA / negentropy contrast: ``"exp"`` (``−exp(−y²/2)``; the default, 39.2 vs 33.7 dB measured, see
        the module docstring) or ``"logcosh"`` (the paper's).
    max_iter, tol
        FastICA fixed-point iterations and convergence tolerance.
    refine_iterations
        Adam steps on the paper's objective after FastICA (0: FastICA alone).
    refine_lr
        Adam step size of the refinement.
    decorrelation, temperature
        λ_MI and T of the mutual-independence penalty ``exp(T |cos(u_i, u_j)|) − 1``.
    tv
        λ_TV of the total-variation prior on the recovered images.
    box
        λ_box of the box prior on the bias-normalised images (needs ``scaling = "bias"``).
    scaling
        ``"auto"`` (``"bias"`` when the first layer has a bias, else ``"minmax"``), ``"bias"`` (exact scale
        and sign from ∇b), ``"minmax"`` (the paper's min-max normalisation, sign by skewness).
    min_bias_share
        A source whose ``|r ∇b|`` is below this share of the largest is min-max normalised instead.
    num_images
        Number of sources B (None: the reported ``num_examples``).
    label_strategy
        Batch labels from the last layer (:mod:`attacks.labels`), or None for no labels.
    seed
        Seed of FastICA's random orthogonal start.
    """

    works_on_aggregate = True

    def __init__(
        self,
        *,
        domain: Literal["gradients", "pixels"] = "gradients",
        contrast: Contrast = "exp",
        max_iter: Annotated[int, Field(ge=1)] = 1000,
        tol: Annotated[float, Field(gt=0)] = 1e-8,
        refine_iterations: Annotated[int, Field(ge=0)] = 1000,
        refine_lr: Annotated[float, Field(gt=0)] = 5e-3,
        decorrelation: Annotated[float, Field(ge=0)] = 1e-3,
        temperature: Annotated[float, Field(gt=0)] = 5.0,
        tv: Annotated[float, Field(ge=0)] = 0.0,
        box: Annotated[float, Field(ge=0)] = 1.0,
        scaling: Literal["auto", "bias", "minmax"] = "auto",
        min_bias_share: Annotated[float, Field(ge=0, lt=1)] = 1e-6,
        num_images: Annotated[int, Field(ge=1)] | None = None,
        label_strategy: LabelStrategy | None = None,
        seed: int = 0,
    ) -> None:
        self.domain, self.contrast, self.max_iter, self.tol = domain, contrast, max_iter, tol
        self.refine_iterations, self.refine_lr = refine_iterations, refine_lr
        self.decorrelation, self.temperature, self.tv, self.box = decorrelation, temperature, tv, box
        self.scaling, self.min_bias_share, self.num_images = scaling, min_bias_share, num_images
        self.label_strategy, self.seed = label_strategy, seed

    def reconstruct(self, view: ServerView) -> Reconstruction:
        t0 = time.perf_counter()
        if view.sketch is not None:
            raise ValueError("cocktail_party reads the first layer of a plain payload, not a raw sketch")
        if view.protocol.kind not in ("gradient", "update"):
            raise ValueError(f"unknown protocol kind {view.protocol.kind!r}; known: gradient, update")
        name, has_bias = first_dense_layer(view.model, view.input_shape)
        scaling = ("bias" if has_bias else "minmax") if self.scaling == "auto" else self.scaling
        if scaling == "bias" and not has_bias:
            raise ValueError(f"scaling = 'bias' needs a bias on the first layer {name!r}; use 'minmax'")
        prefix = f"{name}." if name else ""
        parts = unflatten(view.payload.detach().to("cpu", torch.float64), layout_of(view.model))
        gw = parts[prefix + "weight"]  # (m, n): rows are mixtures of the inputs
        gb = parts[prefix + "bias"] if has_bias else None
        m, n = gw.shape
        b = num_images_of(view, self.num_images)
        k = min(b, m, n)
        image_like = len(view.input_shape) == 3 and min(view.input_shape[1:]) >= 2
        domain = self.domain if image_like else "pixels"
        obs = spatial_differences(gw, view.input_shape) if domain == "gradients" else gw
        z, wht, sing = whiten(obs, k)
        rank = int((sing > sing[0] * 1e-9).sum()) if sing.numel() and float(sing[0]) > 0 else 0
        if rank == 0:
            raise ValueError("cocktail_party: the first layer's gradient is zero (nothing to separate)")
        g = torch.Generator().manual_seed(self.seed)
        u, fast_iters, converged = fastica(
            z, contrast=self.contrast, max_iter=self.max_iter, tol=self.tol, generator=g
        )
        objective = math.nan
        if self.refine_iterations > 0 and k > 1:
            u, objective = self._refine(
                u, z, wht @ gw, None if gb is None else wht @ gb, scaling, view.input_shape
            )
        r = u @ wht  # (k, m): each row unmixes one source from the rows of ∇W
        sources = r @ gw  # (k, n), uncentred
        images, bias_scaled = self._scale(sources, None if gb is None else r @ gb, scaling)
        labels = recover_labels(view, strategy=self.label_strategy) if self.label_strategy else None
        return Reconstruction(
            images=images.to(torch.float32).reshape(k, *view.input_shape),
            labels=labels,
            losses=(objective,) if math.isfinite(objective) else (),
            info={
                "attack": "cocktail_party",
                "layer": name,
                "sources": k,
                "num_images": b,
                "rank": rank,
                "domain": domain,
                "contrast": self.contrast,
                "fastica_iterations": fast_iters,
                "fastica_converged": converged,
                "refine_iterations": self.refine_iterations if k > 1 else 0,
                "scaling": scaling,
                "bias_scaled": bias_scaled,
                "seconds": time.perf_counter() - t0,
            },
        )

    def _refine(
        self,
        u0: torch.Tensor,
        z: torch.Tensor,
        wg: torch.Tensor,
        wb: torch.Tensor | None,
        scaling: str,
        input_shape: tuple[int, ...],
    ) -> tuple[torch.Tensor, float]:
        """Adam on the paper's objective (negentropy, mutual independence, TV) plus the box prior, from the
        FastICA solution; ``wg = w ∇W`` and ``wb = w ∇b`` are the whitened first-layer gradients. Runs in
        float32 (unit-variance data; several times faster than float64 on a CPU)."""
        k = u0.shape[0]
        z, wg = z.float(), wg.float()
        wb = None if wb is None else wb.float()
        gauss = gaussian_contrast_mean(self.contrast)
        off = ~torch.eye(k, dtype=torch.bool)
        use_box = self.box > 0 and scaling == "bias" and wb is not None
        use_tv = self.tv > 0 and len(input_shape) == 3

        def loss_fn(u: torch.Tensor) -> torch.Tensor:
            un = u / u.norm(dim=1, keepdim=True)
            loss = -negentropy(un @ z, self.contrast, gauss).mean()
            if self.decorrelation > 0:
                cos = (un @ un.T).abs()[off]
                loss = loss + self.decorrelation * (torch.exp(self.temperature * cos) - 1).mean()
            if use_box or use_tv:
                src = un @ wg
                img = src / (un @ wb)[:, None] if (scaling == "bias" and wb is not None) else src
                if use_box:
                    loss = loss + self.box * (F.relu(-img) + F.relu(img - 1)).mean()
                if use_tv:
                    loss = loss + self.tv * total_variation(img.reshape(k, *input_shape))
            return loss

        u = u0.float().clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=self.refine_lr)
        for _ in steps(self.refine_iterations, "cocktail_party (refine)"):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(u)
            loss.backward()
            opt.step()
        with torch.no_grad():
            final = float(loss_fn(u))
            un = u / u.norm(dim=1, keepdim=True)
        return un.detach().double(), final

    def _scale(self, sources: torch.Tensor, d: torch.Tensor | None, scaling: str) -> tuple[torch.Tensor, int]:
        """Images in [0, 1] from the sources (k, n): divided by ``d = r ∇b`` (exact sign and scale), or
        min-max normalised with the sign of positive skewness; returns them and how many were bias-scaled."""
        lo, hi = sources.min(dim=1, keepdim=True).values, sources.max(dim=1, keepdim=True).values
        c = sources - sources.mean(dim=1, keepdim=True)
        skew = (c**3).mean(dim=1, keepdim=True)
        pos = (sources - lo) / (hi - lo).clamp_min(1e-300)
        minmax = torch.where(skew >= 0, pos, 1 - pos)
        if scaling != "bias" or d is None:
            return minmax.clamp(0, 1), 0
        ok = d.abs() > self.min_bias_share * float(d.abs().max())
        ratio = sources / torch.where(ok, d, torch.ones_like(d))[:, None]
        return torch.where(ok[:, None], ratio, minmax).clamp(0, 1), int(ok.sum())
