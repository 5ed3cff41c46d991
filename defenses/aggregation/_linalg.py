"""Shared, vectorised building blocks of the robust aggregation rules.

All pairwise quantities are computed from the Gram matrix ``G = U Uᵀ`` (one matrix product over the
model dimension, accumulated in float64 over chunks of columns so that a 100 × 11M float32 update
matrix never needs a second full-size temporary). Coordinate-wise statistics (median, trimmed mean,
sums of absolute differences) are computed over chunks of columns as well. Nothing here loops over
coordinates in Python; loops run over column chunks only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "column_chunks",
    "coordinate_median",
    "cosine_similarity",
    "gram",
    "gram_with_offset",
    "l1_distance_row_sums",
    "lowest",
    "row_norms",
    "sq_distances",
    "weighted_mean",
    "weighted_sum",
]

DEFAULT_CHUNK_ELEMENTS = 1 << 24
"""Elements (rows × columns) per chunk: 16M float64 values = 128 MiB of temporaries."""


def column_chunks(d: int, n: int, *, max_elements: int = DEFAULT_CHUNK_ELEMENTS) -> Iterator[slice]:
    """Slices of ``range(d)`` so that ``n`` rows × one slice hold at most ``max_elements`` values.

    >>> [(s.start, s.stop) for s in column_chunks(10, 2, max_elements=8)]
    [(0, 4), (4, 8), (8, 10)]
    """
    step = max(1, max_elements // max(n, 1))
    for start in range(0, d, step):
        yield slice(start, min(d, start + step))


def gram(updates: torch.Tensor, *, max_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """``U Uᵀ`` in float64, accumulated over column chunks of ``U`` (shape ``(n, n)``).

    Float64 accumulation keeps ``‖a‖² + ‖b‖² − 2a·b`` accurate for nearby updates.
    """
    n, d = updates.shape
    out = torch.zeros(n, n, dtype=torch.float64, device=updates.device)
    for sl in column_chunks(d, n, max_elements=max_elements):
        block = updates[:, sl].to(torch.float64)
        out.addmm_(block, block.T)
    return out


def sq_distances(g: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``‖u_i − u_j‖²`` from a Gram matrix (clamped at 0, zero diagonal)."""
    sq = torch.diagonal(g)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * g).clamp_min(0.0)
    return d2.fill_diagonal_(0.0)


def cosine_similarity(g: torch.Tensor, *, eps: float = 1e-30) -> torch.Tensor:
    """Cosine similarities ``u_i·u_j / (‖u_i‖‖u_j‖)`` from a Gram matrix; a zero row has similarity 0
    to every other row and 1 to itself."""
    norms = torch.diagonal(g).clamp_min(0.0).sqrt()
    cs = g / (norms[:, None] * norms[None, :]).clamp_min(eps)
    cs = cs.clamp(-1.0, 1.0)
    return cs.fill_diagonal_(1.0)


def l1_distance_row_sums(
    updates: torch.Tensor, *, max_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> torch.Tensor:
    """``r_i = Σ_j ‖u_i − u_j‖₁`` for every row, in O(n log n · d) instead of O(n² · d).

    Per coordinate, with the column sorted ascending as ``s_0 ≤ … ≤ s_{n−1}``, inclusive prefix
    sums ``Q_r = s_0 + … + s_r`` and total ``T``, the entry at sorted rank ``r`` contributes
    ``Σ_j |s_r − s_j| = s_r·r − (Q_r − s_r) + (T − Q_r) − s_r·(n − 1 − r)
    = s_r·(2r − n + 2) − 2Q_r + T``. The ``T`` terms add the same grand total to every row; the rest
    is scattered back to the row it came from and summed over coordinates (float64).

    >>> u = torch.tensor([[0.0, 1.0], [2.0, 1.0], [3.0, -1.0]])
    >>> l1_distance_row_sums(u).tolist()
    [7.0, 5.0, 8.0]
    """
    n, d = updates.shape
    out = torch.zeros(n, dtype=torch.float64, device=updates.device)
    coef = torch.arange(n, dtype=torch.float64, device=updates.device)[:, None] * 2 - (n - 2)
    grand_total = torch.zeros((), dtype=torch.float64, device=updates.device)
    # sort + float64 copies + prefix sums: ~4 temporaries per element
    for sl in column_chunks(d, n, max_elements=max(1, max_elements // 4)):
        s, idx = torch.sort(updates[:, sl].to(torch.float64), dim=0)
        q = torch.cumsum(s, dim=0)
        grand_total += q[-1].sum()
        contrib = (s * coef).sub_(q, alpha=2.0)
        out += torch.empty_like(contrib).scatter_(0, idx, contrib).sum(dim=1)  # deterministic on GPU too
    return out + grand_total


def coordinate_median(x: torch.Tensor) -> torch.Tensor:
    """Median over rows (dim 0) of one chunk; for an even count the mean of the two middle values
    (as ``numpy.median``), not the lower one that ``torch.median`` returns."""
    n = x.shape[0]
    s, _ = torch.sort(x, dim=0)
    if n % 2:
        return s[n // 2]
    return (s[n // 2 - 1].to(torch.float64) + s[n // 2].to(torch.float64)).div(2).to(x.dtype)


def lowest(scores: torch.Tensor, k: int, ids: Sequence[int]) -> list[int]:
    """Row indices of the ``k`` lowest scores; ties broken by client id, so the choice does not
    depend on the row order (NaN scores rank last).

    >>> lowest(torch.tensor([3.0, 1.0, 1.0]), 2, [7, 9, 4])
    [2, 1]
    """
    vals = scores.detach().to(torch.float64).cpu().tolist()
    order = sorted(
        range(len(vals)), key=lambda i: (vals[i] != vals[i], vals[i] if vals[i] == vals[i] else 0.0, ids[i])
    )
    return order[: max(0, k)]


def weighted_sum(updates: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """``Σ_i c_i u_i`` with float64 coefficients and accumulation over column chunks."""
    n, d = updates.shape
    c = coeffs.to(device=updates.device, dtype=torch.float64)
    out = torch.empty(d, dtype=updates.dtype, device=updates.device)
    for sl in column_chunks(d, n):
        out[sl] = (c @ updates[:, sl].to(torch.float64)).to(updates.dtype)
    return out


def weighted_mean(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_i w_i u_i / Σ_i w_i`` (float64 weights, chunked accumulation)."""
    w = weights.to(device=updates.device, dtype=torch.float64)
    return weighted_sum(updates, w / w.sum())


def gram_with_offset(g: torch.Tensor, updates: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Gram matrix of the rows ``u_i + o`` from ``g = UUᵀ``: ``G + a1ᵀ + 1aᵀ + ‖o‖²`` with
    ``a_i = u_i·o`` (e.g. local models ``w_global + Δ_i`` from updates Δ_i)."""
    n, d = updates.shape
    o = offset.to(device=updates.device, dtype=torch.float64)
    a = torch.zeros(n, dtype=torch.float64, device=updates.device)
    for sl in column_chunks(d, n):
        a += updates[:, sl].to(torch.float64) @ o[sl]
    return g + a[:, None] + a[None, :] + o.square().sum()


def row_norms(updates: torch.Tensor) -> torch.Tensor:
    """``‖u_i‖₂`` of every row, accumulated in float64 over column chunks."""
    n, d = updates.shape
    acc = torch.zeros(n, dtype=torch.float64, device=updates.device)
    for sl in column_chunks(d, n):
        acc += updates[:, sl].to(torch.float64).square().sum(dim=1)
    return acc.sqrt()
