"""Multi-metrics (Huang, Li, Chen, Shi, Gao; ICCV 2023, "Multi-metrics adaptively identifies
backdoors in Federated learning")."""

from __future__ import annotations

import math
from typing import Literal

import torch

from defenses.aggregation._linalg import (
    cosine_similarity,
    gram,
    gram_with_offset,
    l1_distance_row_sums,
    lowest,
    sq_distances,
    weighted_mean,
)
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext

__all__ = ["MultiMetrics", "mahalanobis_scores", "multi_metrics_features", "multi_metrics_select"]

Variant = Literal["paper", "official-code"]


def multi_metrics_features(
    updates: torch.Tensor, *, variant: Variant = "paper", offset: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-client 3-vectors ``x_i = (Σ_j cos-dist, Σ_j Manhattan, Σ_j Euclidean)`` over ``j ≠ i``.

    ``"paper"`` (Huang et al., 2023, Sec. 3): on the updates ``Δ_i``, cosine distance
    ``1 − cos(Δ_i, Δ_j)``, Manhattan ``‖Δ_i − Δ_j‖₁``, Euclidean ``‖Δ_i − Δ_j‖₂``.

    ``"official-code"`` (``defense.py`` of the authors' repository): on the full local weights
    ``w_i = offset + Δ_i``, the *squared* cosine distance ``(1 − cos(w_i, w_j))²``, Manhattan
    ``‖w_i − w_j‖₁`` (equal to the paper's: the offset cancels) and, as "Euclidean", the difference
    of lengths ``|‖w_i‖₂ − ‖w_j‖₂|``.

    Cosine and Euclidean terms come from one Gram matrix; the Manhattan sums from per-coordinate
    sorting (:func:`~defenses.aggregation._linalg.l1_distance_row_sums`), never ``n²`` loops.

    Returns
    -------
    torch.Tensor
        ``(n, 3)`` float64 features, columns (cosine, Manhattan, Euclidean).
    """
    g = gram(updates)
    manhattan = l1_distance_row_sums(updates)
    if variant == "paper":
        cos_d = 1.0 - cosine_similarity(g)
        euclid = sq_distances(g).sqrt()
    elif variant == "official-code":
        if offset is None:
            raise ValueError("the official-code variant needs the global model vector as offset")
        gw = gram_with_offset(g, updates, offset)
        cos_d = (1.0 - cosine_similarity(gw)).square()
        lengths = torch.diagonal(gw).clamp_min(0.0).sqrt()
        euclid = (lengths[:, None] - lengths[None, :]).abs()
    else:
        raise ValueError(f"unknown variant {variant!r}; known: paper, official-code")
    cos_d = cos_d.fill_diagonal_(0.0)
    euclid = euclid.fill_diagonal_(0.0)
    return torch.stack([cos_d.sum(dim=1), manhattan, euclid.sum(dim=1)], dim=1)


def mahalanobis_scores(x: torch.Tensor) -> torch.Tensor:
    """Dynamic weighting of Huang et al. (2023, Sec. 3.3): ``s_i = x_iᵀ Σ⁺ x_i`` with ``Σ`` the sample
    covariance (centred, ``n − 1``) of the round's feature vectors and ``x_i`` used as is.

    The square root of the paper's ``δ_i = √(x_iᵀ Σ⁻¹ x_i)`` is dropped (the ranking is the same).
    Robust to a singular ``Σ`` (collinear features, ``n ≤ 3``): the Moore–Penrose pseudo-inverse is
    used, after scaling every feature by its standard deviation — a diagonal rescaling that leaves
    ``xᵀΣ⁻¹x`` unchanged when ``Σ`` is invertible but keeps the pseudo-inverse's cut-off meaningful
    when the features differ by orders of magnitude (cosine ≈ 1, Manhattan ≈ 10⁴). A feature with
    zero spread is dropped (its scale is set so that it contributes nothing). With ``n < 2`` all
    scores are 0.

    >>> x = torch.tensor([[1.0, 2, 3], [2, 2, 2], [1, 5, 1], [4, 4, 9]], dtype=torch.float64)
    >>> plain = torch.einsum("ij,jk,ik->i", x, torch.linalg.inv(torch.cov(x.T)), x)
    >>> bool(torch.allclose(mahalanobis_scores(x), plain))
    True
    """
    n = x.shape[0]
    x = x.to(torch.float64)
    if n < 2:
        return torch.zeros(n, dtype=torch.float64, device=x.device)
    std = x.std(dim=0)
    live = std > 0
    z = torch.where(live, x / torch.where(live, std, torch.ones_like(std)), torch.zeros_like(x))
    cov = torch.cov(z.T)
    inv = torch.linalg.pinv(cov, hermitian=True)
    return torch.einsum("ij,jk,ik->i", z, inv, z)


def multi_metrics_select(
    updates: torch.Tensor,
    *,
    keep_fraction: float,
    ids: list[int] | None = None,
    variant: Variant = "paper",
    offset: torch.Tensor | None = None,
) -> tuple[list[int], torch.Tensor]:
    """Rows kept by Multi-metrics: the ``max(1, ⌊keep_fraction · n⌋)`` lowest scores.

    Returns
    -------
    tuple[list[int], torch.Tensor]
        Selected row indices (lowest score first; ties broken by client id) and all scores.
    """
    n = updates.shape[0]
    scores = mahalanobis_scores(multi_metrics_features(updates, variant=variant, offset=offset))
    k = max(1, math.floor(keep_fraction * n + 1e-9))
    return lowest(scores, k, ids if ids is not None else list(range(n))), scores


@AGGREGATORS.register("multi_metrics")
class MultiMetrics(Aggregator):
    """Multi-metrics (Huang et al., ICCV 2023): score each client by a covariance-whitened norm of its
    summed cosine / Manhattan / Euclidean distances to the other clients, keep the lowest-scoring
    fraction, average them weighted by example counts.

    Score = ``x_iᵀ Σ⁺ x_i`` (higher = more suspicious); ``accepted`` = the kept clients.

    ``variant="paper"`` follows the paper; ``variant="official-code"`` reproduces the authors'
    released ``defense.py``. Differences of the official code from the paper:

    * features are computed on full local weights ``w_global + Δ_i``, not on updates (cosine and
      length terms change; Manhattan does not);
    * the cosine term is the *squared* cosine distance;
    * the "Euclidean" term is the difference of L2 norms ``|‖w_i‖ − ‖w_j‖|``, not ``‖w_i − w_j‖``;
    * ``Σ`` is inverted with a plain inverse (here: the pseudo-inverse in both variants, identical
      when ``Σ`` is invertible; the official code raises on a singular ``Σ``);
    * the kept fraction is hard-coded to 0.3 (here ``keep_fraction``).

    Both variants score the raw feature vector ``x_i`` (no centring of ``x_i`` on the round mean;
    only the covariance is centred, as ``numpy.cov``); the paper's square root is dropped, which
    does not change the ranking. The kept updates' weighted mean of Δ equals the official code's
    weighted mean of full weights minus the global model. At least one client is always kept
    (the official code would average nothing when ``⌊0.3 n⌋ = 0``).

    Parameters
    ----------
    keep_fraction : float
        Fraction of the round's clients kept, in ``(0, 1]`` (paper and code: 0.3).
    variant : str
        ``"paper"`` or ``"official-code"``.
    """

    def __init__(self, keep_fraction: float = 0.3, variant: Variant = "paper") -> None:
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
        if variant not in ("paper", "official-code"):
            raise ValueError(f"unknown variant {variant!r}; known: paper, official-code")
        self.keep_fraction = keep_fraction
        self.variant: Variant = variant

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        ids = list(ctx.client_ids)
        rows, scores = multi_metrics_select(
            updates, keep_fraction=self.keep_fraction, ids=ids, variant=self.variant, offset=ctx.global_vector
        )
        update = weighted_mean(updates[rows], weights[rows])
        return AggregationResult(
            update, tuple(ids[r] for r in rows), {cid: float(s) for cid, s in zip(ids, scores.tolist())}
        )
