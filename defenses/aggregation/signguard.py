"""SignGuard (Xu, Huang, Song, Lan, ICDCS 2022, "Byzantine-robust Federated Learning through
Collaborative Malicious Gradient Filtering")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from defenses.aggregation._linalg import column_chunks, coordinate_median, row_norms, weighted_sum
from defenses.aggregation.norm_clipping import clip_factors
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext

__all__ = ["SignGuard", "largest_sign_cluster", "norm_filter", "sign_features"]


def norm_filter(norms: torch.Tensor, *, lower: float, upper: float) -> tuple[torch.Tensor, float]:
    """Mask of the clients whose L2 norm lies in ``[L·M, R·M]``, ``M`` the median norm (for an even
    count the mean of the two middle norms, as ``numpy.median``), and ``M`` itself.

    >>> mask, m = norm_filter(torch.tensor([0.01, 1.0, 2.0, 2.5, 9.0]), lower=0.1, upper=3.0)
    >>> mask.tolist(), m
    ([False, True, True, True, False], 2.0)
    """
    m = float(coordinate_median(norms.to(torch.float64)[:, None])[0])
    return (norms >= lower * m) & (norms <= upper * m), m


def sign_features(updates: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
    """Per client, the fractions of positive, zero and negative entries among the coordinates ``cols``
    (all coordinates if ``None``), counted over column chunks (float64, ``(n, 3)``).

    >>> sign_features(torch.tensor([[1.0, -2.0, 0.0, 3.0], [-1.0, -1.0, -1.0, 0.0]]), None).tolist()
    [[0.5, 0.25, 0.25], [0.0, 0.25, 0.75]]
    """
    n, d = updates.shape
    k = d if cols is None else cols.numel()
    counts = torch.zeros(n, 3, dtype=torch.float64, device=updates.device)
    for sl in column_chunks(k, n):
        block = updates[:, sl] if cols is None else updates[:, cols[sl].to(updates.device)]
        counts[:, 0] += (block > 0).sum(dim=1)
        counts[:, 1] += (block == 0).sum(dim=1)
        counts[:, 2] += (block < 0).sum(dim=1)
    return (counts / max(k, 1)).cpu()


def largest_sign_cluster(features: np.ndarray, *, resolution: float) -> np.ndarray:
    """Boolean mask of the largest MeanShift cluster of the sign features (Xu et al., 2022, Sec. IV).

    The bandwidth is scikit-learn's ``estimate_bandwidth`` with ``quantile = 0.5`` on all points (as
    the authors' code, which subsamples 50 points); seeds are all points; points farther than the
    bandwidth from every centre are in no cluster (``cluster_all=False``, as the authors' code). When
    more than half the points coincide the estimate is 0; the bandwidth is then ``resolution / 2``
    (half the spacing of the features), so clusters are groups of identical features. Ties between
    equally large clusters go to the one holding the earliest row (callers pass rows in client-id
    order).
    """
    n = features.shape[0]
    if n == 1:
        return np.ones(1, dtype=bool)
    # deferred: scikit-learn costs ~1.7 s to import, paid only by a process that runs SignGuard
    from sklearn.cluster import MeanShift, estimate_bandwidth

    bandwidth = float(estimate_bandwidth(features, quantile=0.5))
    if not bandwidth > 0:
        bandwidth = resolution / 2
    labels = MeanShift(bandwidth=bandwidth, cluster_all=False).fit(features).labels_
    clustered = labels[labels >= 0]
    if clustered.size == 0:  # cannot happen (every seed is a point), kept for safety
        return np.ones(n, dtype=bool)
    sizes = np.bincount(clustered)
    best = max(range(sizes.size), key=lambda c: (sizes[c], -int(np.argmax(labels == c))))
    return np.asarray(labels == best)


def _canonical(ids: Sequence[int]) -> list[int]:
    return sorted(range(len(ids)), key=lambda i: ids[i])


@AGGREGATORS.register("signguard")
class SignGuard(Aggregator):
    """SignGuard (Xu, Huang, Song, Lan, ICDCS 2022): a norm filter and a sign-statistics clustering
    filter, then the mean of the survivors clipped to the median norm.

    1. Norm filter: keep the clients with ``L·M ≤ ‖g_i‖ ≤ R·M``, ``M`` the median norm of the round.
    2. Sign filter: on a random subset of ``⌊coord_fraction·d⌋`` coordinates (at least one; from
       ``ctx.generator("signguard")``) each client's fractions of positive, zero and negative
       entries are clustered with MeanShift; keep the largest cluster (see
       :func:`largest_sign_cluster`).
    3. ``accepted`` = the intersection; the aggregate is ``(1/|S|) Σ_{i∈S} g_i·min(1, M/‖g_i‖)``,
       uniform as in the paper (the example counts are not used). If the intersection is empty the
       aggregate is the zero update and nothing is accepted.

    Score = the number of the two filters the client fails (0, 1 or 2; higher = more suspicious).
    Clustering runs on the rows in client-id order, so the result does not depend on the row order.
    With the data-driven bandwidth MeanShift can split even a homogeneous benign round into several
    clusters, so some benign clients are rejected without any attack (as with the authors' code).

    Deviations from the authors' code (``JianXu95/SignGuard``), following the paper: the coordinates
    are a random subset rather than one contiguous block at a random offset; the features are the raw
    fractions (the code divides each column by its maximum); the norm bounds are inclusive (the code's
    are strict); the median of an even count averages the two middle norms (the code's
    ``torch.median`` takes the lower one); the bandwidth is estimated on all points, not on a random
    50 (so it does not depend on the row order).

    Parameters
    ----------
    lower : float
        ``L``, the lowest allowed ratio of a norm to the median norm (paper: 0.1).
    upper : float
        ``R``, the highest allowed ratio (paper: 3.0).
    coord_fraction : float
        Fraction of the coordinates whose signs are counted, in ``(0, 1]`` (paper: 10 %).
    """

    def __init__(
        self,
        *,
        lower: Annotated[float, Field(ge=0)] = 0.1,
        upper: Annotated[float, Field(gt=0)] = 3.0,
        coord_fraction: Annotated[float, Field(gt=0, le=1)] = 0.1,
    ) -> None:
        if not (0 <= lower <= upper and upper > 0 and 0 < coord_fraction <= 1):
            raise ValueError("need 0 <= lower <= upper, upper > 0 and 0 < coord_fraction <= 1")
        self.lower, self.upper, self.coord_fraction = float(lower), float(upper), float(coord_fraction)

    def _columns(self, d: int, ctx: RoundContext) -> torch.Tensor | None:
        k = max(1, int(self.coord_fraction * d))
        if k >= d:
            return None
        return torch.randperm(d, generator=ctx.generator("signguard"))[:k].sort().values

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        ids = list(ctx.client_ids)
        n, d = updates.shape
        norms = row_norms(updates)
        in_norm, m = norm_filter(norms, lower=self.lower, upper=self.upper)
        cols = self._columns(d, ctx)
        order = _canonical(ids)
        feats = sign_features(updates, cols)[order].numpy()
        k = d if cols is None else cols.numel()
        in_cluster_sorted = largest_sign_cluster(feats, resolution=1.0 / max(k, 1))
        in_cluster = np.zeros(n, dtype=bool)
        in_cluster[order] = in_cluster_sorted
        keep = in_norm.cpu().numpy() & in_cluster
        rows = [i for i in range(n) if keep[i]]
        coeffs = torch.zeros(n, dtype=torch.float64, device=updates.device)
        if rows:
            factors = clip_factors(norms, m)
            coeffs[rows] = factors[rows] / len(rows)
        update = weighted_sum(updates, coeffs)
        failed = (~in_norm.cpu().numpy()).astype(float) + (~in_cluster).astype(float)
        return AggregationResult(
            update, tuple(ids[i] for i in rows), {cid: float(s) for cid, s in zip(ids, failed.tolist())}
        )
