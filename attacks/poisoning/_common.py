"""Shared numerics of the untargeted model-poisoning attacks (private).

Statistics and pairwise quantities are accumulated in float64 over chunks of columns, so that an
``(n, d)`` float32 update matrix of a large model never needs a full-size float64 copy. The
attacks package must not import :mod:`defenses` (layering), so the few helpers it needs (Gram
matrix, Krum scores) live here.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = [
    "check_benign",
    "column_chunks",
    "direction_sign",
    "gram",
    "krum_scores",
    "matvec",
    "mean_std",
    "rows_of",
    "sq_distances",
]

DEFAULT_CHUNK_ELEMENTS = 1 << 24
"""Values (rows × columns) per chunk: 16M float64 values = 128 MiB of temporaries."""


def check_benign(benign: torch.Tensor, *, num_malicious: int, min_rows: int = 1) -> None:
    """Validate the common arguments: ``benign`` is ``(n_b, d)`` with at least ``min_rows`` rows and
    ``num_malicious ≥ 0``."""
    if benign.dim() != 2:
        raise ValueError(f"benign must be a 2-D (n_b, d) tensor, got shape {tuple(benign.shape)}")
    if benign.shape[0] < min_rows:
        raise ValueError(f"need at least {min_rows} known update(s), got {benign.shape[0]}")
    if num_malicious < 0:
        raise ValueError(f"num_malicious must be >= 0, got {num_malicious}")


def column_chunks(d: int, n: int, *, max_elements: int = DEFAULT_CHUNK_ELEMENTS) -> Iterator[slice]:
    """Slices of ``range(d)`` so that ``n`` rows × one slice hold at most ``max_elements`` values.

    >>> [(s.start, s.stop) for s in column_chunks(10, 2, max_elements=8)]
    [(0, 4), (4, 8), (8, 10)]
    """
    step = max(1, max_elements // max(n, 1))
    for start in range(0, d, step):
        yield slice(start, min(d, start + step))


def gram(x: torch.Tensor) -> torch.Tensor:
    """``X Xᵀ`` in float64, accumulated over column chunks (``(n, n)``)."""
    n, d = x.shape
    out = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for sl in column_chunks(d, n):
        block = x[:, sl].to(torch.float64)
        out.addmm_(block, block.T)
    return out


def sq_distances(g: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances from a Gram matrix (clamped at 0, zero diagonal)."""
    sq = torch.diagonal(g)
    return (sq[:, None] + sq[None, :] - 2.0 * g).clamp_min(0.0).fill_diagonal_(0.0)


def mean_std(x: torch.Tensor, *, correction: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate-wise mean and standard deviation over the rows (float64, ``(d,)`` each).

    ``correction=1`` is the sample (Bessel-corrected) standard deviation, as ``torch.std``; a single
    row gives a zero standard deviation instead of NaN.
    """
    n, d = x.shape
    mu = torch.empty(d, dtype=torch.float64, device=x.device)
    sd = torch.zeros(d, dtype=torch.float64, device=x.device)
    for sl in column_chunks(d, n):
        block = x[:, sl].to(torch.float64)
        mu[sl] = block.mean(dim=0)
        if n > correction:
            sd[sl] = block.std(dim=0, correction=correction)
    return mu, sd


def matvec(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``X v`` in float64 over column chunks (``(n,)``)."""
    n, d = x.shape
    v64 = v.to(device=x.device, dtype=torch.float64)
    out = torch.zeros(n, dtype=torch.float64, device=x.device)
    for sl in column_chunks(d, n):
        out += x[:, sl].to(torch.float64) @ v64[sl]
    return out


def rows_of(v: torch.Tensor, count: int, like: torch.Tensor) -> torch.Tensor:
    """``count`` copies of the vector ``v`` as a new ``(count, d)`` tensor with ``like``'s dtype/device."""
    return v.to(device=like.device, dtype=like.dtype).unsqueeze(0).repeat(count, 1)


def krum_scores(sq_dists: torch.Tensor, f: int) -> torch.Tensor:
    """Krum score of each row (Blanchard et al., NeurIPS 2017): the sum of its ``n − f − 2`` smallest
    squared distances to the other rows, with at least one and at most ``n − 1`` neighbours (the same
    floor as the project's Krum aggregator, so that small rounds still get a score)."""
    n = sq_dists.shape[0]
    if n == 1:
        return torch.zeros(1, dtype=torch.float64, device=sq_dists.device)
    k = min(max(1, n - f - 2), n - 1)
    off = sq_dists.to(torch.float64).clone().fill_diagonal_(float("inf"))
    return torch.topk(off, k, dim=1, largest=False).values.sum(dim=1)


def direction_sign(benign: torch.Tensor, direction: torch.Tensor | None) -> torch.Tensor:
    """The estimated change direction ``s`` (float64 signs): ``sign(direction)`` if given, otherwise
    the sign of the coordinate-wise mean of ``benign``."""
    if direction is None:
        mu, _ = mean_std(benign)
        return torch.sign(mu)
    if direction.shape != benign.shape[1:]:
        raise ValueError(f"direction must have shape {tuple(benign.shape[1:])}, got {tuple(direction.shape)}")
    return torch.sign(direction.to(device=benign.device, dtype=torch.float64))
