"""FLAME (Nguyen, Rieger, Chen, Yalame, Möllering, Fereidooni, Marchal, Miettinen, Mirhoseini,
Zeitouni, Koushanfar, Sadeghi, Schneider; USENIX Security 2022, "FLAME: Taming Backdoors in
Federated Learning")."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from defenses.aggregation._linalg import (
    coordinate_median,
    cosine_similarity,
    gram,
    gram_with_offset,
    row_norms,
    weighted_sum,
)
from defenses.aggregation.norm_clipping import clip_factors, gaussian_noise
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext

__all__ = ["Flame", "flame_cluster"]


def flame_cluster(cos_dist: np.ndarray) -> np.ndarray:
    """Boolean mask of the majority cluster found by HDBSCAN on a precomputed cosine-distance matrix
    (Nguyen et al., 2022, Sec. 4.2 / Algorithm 1).

    ``min_cluster_size = ⌊n/2⌋ + 1`` so that at most one cluster (holding a majority) exists;
    ``min_samples = 1`` and ``allow_single_cluster=True`` let that single cluster be returned
    (scikit-learn's default would label everything noise when only one cluster can exist). Points
    labelled noise are outside. If HDBSCAN finds no cluster at all, every client is kept (the model
    is then protected only by clipping and noise).
    """
    n = cos_dist.shape[0]
    if n < 3:
        return np.ones(n, dtype=bool)
    # deferred: scikit-learn costs ~1.7 s to import, paid only by a process that runs FLAME
    from sklearn.cluster import HDBSCAN

    labels = HDBSCAN(
        min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed", allow_single_cluster=True, copy=True
    ).fit_predict(cos_dist)
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return np.ones(n, dtype=bool)
    majority = np.bincount(clustered).argmax()
    return np.asarray(labels == majority)


@AGGREGATORS.register("flame")
class Flame(Aggregator):
    """FLAME (Nguyen et al., USENIX Security 2022): cluster, clip, add noise.

    1. Pairwise cosine distances ``1 − cos(·,·)`` of the clients' updates (``cluster_on="updates"``)
       or of their local models ``w_global + Δ_i`` (``"weights"``, the paper's Algorithm 1);
       HDBSCAN with ``min_cluster_size = n/2 + 1`` keeps the majority cluster (see
       :func:`flame_cluster`).
    2. ``S = median_i ‖Δ_i‖`` over *all* clients of the round; each kept update is scaled by
       ``min(1, S/‖Δ_i‖)``.
    3. The kept, clipped updates are averaged (uniformly, as the paper's Algorithm 1) and
       ``N(0, (λ·S)²)`` noise is added per coordinate, from ``ctx.generator("flame")``.

    ``accepted`` = the majority cluster; score = the client's mean cosine distance to the accepted
    clients (higher = more suspicious).

    Deviations: the default clusters updates rather than full weights (the global model's shared
    component makes weight cosines all ≈ 1 on a warm model); the paper picks λ per task (0.001 for
    image classification is the default here) — FLPoison instead scales per-layer noise by the
    layer's std (not reproduced).

    Parameters
    ----------
    noise_lambda : float
        λ, the noise level relative to the clipping bound S (0 disables the noise).
    cluster_on : str
        ``"updates"`` or ``"weights"``.
    """

    def __init__(
        self, noise_lambda: float = 0.001, cluster_on: Literal["updates", "weights"] = "updates"
    ) -> None:
        if noise_lambda < 0:
            raise ValueError("noise_lambda must be >= 0")
        self.noise_lambda = noise_lambda
        self.cluster_on: Literal["updates", "weights"] = cluster_on

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        ids = list(ctx.client_ids)
        n = len(ids)
        g = gram(updates)
        if self.cluster_on == "weights":
            g = gram_with_offset(g, updates, ctx.global_vector)
        dist = (1.0 - cosine_similarity(g)).clamp_min(0.0).fill_diagonal_(0.0)
        dist = (dist + dist.T) / 2
        keep = flame_cluster(dist.cpu().numpy())
        rows = [i for i in range(n) if keep[i]]
        norms = row_norms(updates)
        s = float(coordinate_median(norms[:, None])[0])
        factors = clip_factors(norms, s) if s > 0 else torch.ones_like(norms)
        update = weighted_sum(updates[rows], factors[rows] / len(rows))
        if self.noise_lambda > 0 and s > 0:
            update = update + gaussian_noise(
                update.numel(), self.noise_lambda * s, generator=ctx.generator("flame"), like=update
            )
        scores = dist[:, rows].mean(dim=1).tolist()
        return AggregationResult(update, tuple(ids[r] for r in rows), dict(zip(ids, scores)))
