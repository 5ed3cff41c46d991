"""Linear sketch operators R ∈ ℝ^{s×d}, seeded so every party rebuilds the same R from a seed.

Three families behind one interface (:class:`SketchOperator`):

* :class:`GaussianSketch`: dense R with i.i.d. entries N(0, 1/s), so E[RᵀR] = I. R is never held whole: its
  columns come in fixed blocks of :data:`GAUSSIAN_BLOCK` columns, each drawn from its own seed, and are
  materialised ``chunk_size`` columns at a time (memory O(s·chunk)). Cost O(s·d) time per pass.
* :class:`SRHT`: subsampled randomized Hadamard transform R = √(D/s)·P·(H/√D)·Σ on the zero-padded vector
  (D = next power of two ≥ d, Σ random signs, H the Walsh–Hadamard matrix applied by a fast transform in
  O(D log D), P a uniform sample of s of the D coordinates without replacement). No matrix is ever built.
* :class:`CountSketch`: the AMS / CountSketch table with r rows × c columns (bucket hash h_j and sign hash σ_j
  per row, computed from the seed per index range, so chunks need O(r·chunk) memory). Linear; its unbiased
  adjoint estimate is the mean over rows of σ_j(i)·T[j, h_j(i)], the robust one the median over rows
  (used by :meth:`CountSketch.unsketch_topk`, as in FetchSGD / CSVec).

All operators take vectors of shape (d,) or batches (n, d) and return (s,) or (n, s); sketches are flat
(a count-sketch table is flattened row-major). Randomness is drawn on the CPU from the seed (so every device
gets the same R) and moved to the input's device; the arithmetic runs there. The sketch framework is that of
Song, Wang, Yu, Zhang, "Sketching for First Order Method: Efficient Algorithm for Low-Bandwidth Channel and
Vulnerability", ICML 2023: send R·g, de-sketch with Rᵀ, a fresh R each round from shared randomness.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from simulator.context import derive_seed, make_generator

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "GAUSSIAN_BLOCK",
    "GAUSSIAN_CACHE_ELEMENTS",
    "HASH_CACHE_ELEMENTS",
    "SRHT",
    "CountSketch",
    "GaussianSketch",
    "SketchOperator",
    "derive_operator_seed",
    "fwht",
]

#: Columns of a Gaussian R drawn from one seed; part of R's definition (changing it changes R).
GAUSSIAN_BLOCK = 1024
#: A Gaussian R with at most this many entries (64 MiB) is kept after its first use instead of regenerated.
GAUSSIAN_CACHE_ELEMENTS = 1 << 24
#: Default working-set budget (matrix entries or hashed indices) of one chunk.
DEFAULT_CHUNK_ELEMENTS = 1 << 22
#: CountSketch hashes are kept in memory (5 bytes per entry: int32 bucket, int8 sign) when rows·d is at most
#: this; FetchSGD reuses them every round.
HASH_CACHE_ELEMENTS = 1 << 24


def _as_batch(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, bool]:
    if x.shape[-1] != dim or x.dim() not in (1, 2):
        raise ValueError(f"expected shape ({dim},) or (n, {dim}), got {tuple(x.shape)}")
    return (x.unsqueeze(0), True) if x.dim() == 1 else (x, False)


class SketchOperator(ABC):
    """A seeded linear map ℝ^d → ℝ^s with a de-sketch map ℝ^s → ℝ^d.

    Parameters
    ----------
    dim
        d, the length of the vectors sketched.
    seed
        The shared seed that defines the operator; equal seeds give equal operators on every machine.

    Notes
    -----
    Sketch framework of Song, Wang, Yu, Zhang (ICML 2023): y = R·x on the wire, x̂ = desketch(y) at the
    receiver, with E[x̂] = x for the unbiased families.
    """

    def __init__(self, dim: int, seed: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.seed = int(seed)

    @property
    @abstractmethod
    def sketch_dim(self) -> int:
        """s, the number of float32 values a sketch carries."""

    @property
    def bytes_on_wire(self) -> int:
        """Bytes of one float32 sketch."""
        return 4 * self.sketch_dim

    @abstractmethod
    def sketch(self, x: torch.Tensor) -> torch.Tensor:
        """R·x for x of shape (d,) or (n, d); returns (s,) or (n, s), float32."""

    @abstractmethod
    def desketch(self, y: torch.Tensor) -> torch.Tensor:
        """The de-sketched estimate of x from y = R·x (shape (s,) or (n, s)); returns (d,) or (n, d)."""


class GaussianSketch(SketchOperator):
    """Dense Gaussian sketch, entries N(0, 1/s), built chunk by chunk from the seed.

    Song, Wang, Yu, Zhang, ICML 2023 (random Gaussian sketch): E[RᵀR] = I, so ``desketch(sketch(x)) = RᵀRx``
    is an unbiased estimate of x with E‖RᵀRx − x‖² = (d + 1)/s·‖x‖².

    Parameters
    ----------
    dim, seed
        See :class:`SketchOperator`.
    sketch_dim
        s, the number of rows of R.
    chunk_size
        Columns of R materialised at once (rounded up to a multiple of :data:`GAUSSIAN_BLOCK`); ``None`` picks
        about :data:`DEFAULT_CHUNK_ELEMENTS` entries per chunk. R does not depend on it; results agree to
        float32 round-off (summation order differs). When s·d ≤ :data:`GAUSSIAN_CACHE_ELEMENTS` the whole R is
        kept after first use (the compressor reuses one operator for every client of a round); otherwise it
        is regenerated chunk by chunk in every call, memory O(s·chunk).
    """

    def __init__(self, dim: int, seed: int, *, sketch_dim: int, chunk_size: int | None = None) -> None:
        super().__init__(dim, seed)
        if sketch_dim < 1:
            raise ValueError(f"sketch_dim must be positive, got {sketch_dim}")
        self._s = int(sketch_dim)
        if chunk_size is None:
            chunk_size = max(GAUSSIAN_BLOCK, DEFAULT_CHUNK_ELEMENTS // self._s)
        blocks = max(1, math.ceil(chunk_size / GAUSSIAN_BLOCK))
        self.chunk_size = blocks * GAUSSIAN_BLOCK
        self._matrix: torch.Tensor | None = None

    @property
    def sketch_dim(self) -> int:
        return self._s

    def _block(self, b: int, width: int) -> torch.Tensor:
        g = make_generator(self.seed, "gaussian-sketch", b)
        return torch.randn(self._s, width, generator=g) / math.sqrt(self._s)

    def _chunks(self):  # type: ignore[no-untyped-def]
        """Yield (start, stop, R[:, start:stop]) over the columns of R."""
        if self._matrix is None and self._s * self.dim <= GAUSSIAN_CACHE_ELEMENTS:
            self._matrix = self.matrix()
        if self._matrix is not None:
            for start in range(0, self.dim, self.chunk_size):
                stop = min(start + self.chunk_size, self.dim)
                yield start, stop, self._matrix[:, start:stop]
            return
        for start in range(0, self.dim, self.chunk_size):
            stop = min(start + self.chunk_size, self.dim)
            parts = []
            for b in range(start // GAUSSIAN_BLOCK, math.ceil(stop / GAUSSIAN_BLOCK)):
                lo = b * GAUSSIAN_BLOCK
                parts.append(self._block(b, min(GAUSSIAN_BLOCK, self.dim - lo)))
            yield start, stop, torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def matrix(self) -> torch.Tensor:
        """R as a dense (s, d) tensor: for tests and small s·d only."""
        if self._matrix is not None:
            return self._matrix
        blocks = range(math.ceil(self.dim / GAUSSIAN_BLOCK))
        return torch.cat(
            [self._block(b, min(GAUSSIAN_BLOCK, self.dim - b * GAUSSIAN_BLOCK)) for b in blocks], 1
        )

    def sketch(self, x: torch.Tensor) -> torch.Tensor:
        xb, squeeze = _as_batch(x.to(torch.float32), self.dim)
        y = torch.zeros(xb.shape[0], self._s, device=xb.device)
        for start, stop, m in self._chunks():
            y += xb[:, start:stop] @ m.to(xb.device).T
        return y[0] if squeeze else y

    def desketch(self, y: torch.Tensor) -> torch.Tensor:
        yb, squeeze = _as_batch(y.to(torch.float32), self._s)
        out = torch.empty(yb.shape[0], self.dim, device=yb.device)
        for start, stop, m in self._chunks():
            out[:, start:stop] = yb @ m.to(yb.device)
        return out[0] if squeeze else out


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh–Hadamard transform along the last axis (length a power of two), O(D log D).

    >>> fwht(torch.tensor([1., 0., 0., 0.])).tolist()
    [1.0, 1.0, 1.0, 1.0]
    >>> fwht(fwht(torch.tensor([1., 2., 3., 4.]))).tolist()  # H·H = D·I
    [4.0, 8.0, 12.0, 16.0]
    """
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"length must be a power of two, got {n}")
    lead = x.shape[:-1]
    y = x.reshape(-1, n).clone()
    h = 1
    while h < n:
        v = y.view(-1, n // (2 * h), 2, h)
        a = v[:, :, 0, :].clone()
        v[:, :, 0, :] += v[:, :, 1, :]
        v[:, :, 1, :].neg_().add_(a)  # b ← a − b
        h *= 2
    return y.reshape(*lead, n)


class SRHT(SketchOperator):
    """Subsampled randomized Hadamard transform, without ever forming a matrix.

    R = √(D/s)·P·(H/√D)·Σ on x zero-padded to D = 2^⌈log₂ d⌉ (Song, Wang, Yu, Zhang, ICML 2023, SRHT family).
    P samples s of the D rows uniformly without replacement, so E[PᵀP] = (s/D)·I and E[RᵀR] = I: the de-sketch
    Rᵀy (truncated back to d) is unbiased for every choice of signs. Memory: a few float32 copies of the
    padded vector plus the D-long permutation that picks the rows; time O(D log D).

    Parameters
    ----------
    dim, seed
        See :class:`SketchOperator`.
    sketch_dim
        s ≤ D, the number of sampled coordinates.
    chunk_size
        Accepted for a uniform interface and ignored: the signs are drawn in fixed seed blocks of
        ``_SIGN_BLOCK`` coordinates and the transform is global over D, so there is no s×d object to chunk.
    """

    _SIGN_BLOCK = GAUSSIAN_BLOCK * 64

    def __init__(self, dim: int, seed: int, *, sketch_dim: int, chunk_size: int | None = None) -> None:
        super().__init__(dim, seed)
        self.padded_dim = 1 << max(0, (self.dim - 1).bit_length())
        if not 1 <= sketch_dim <= self.padded_dim:
            raise ValueError(f"sketch_dim must be in [1, {self.padded_dim}], got {sketch_dim}")
        self._s = int(sketch_dim)
        self.chunk_size = chunk_size
        self._rows: torch.Tensor | None = None
        self._signs: torch.Tensor | None = None

    @property
    def sketch_dim(self) -> int:
        return self._s

    def signs(self) -> torch.Tensor:
        """Σ's diagonal (±1, length d), drawn block by block from the seed."""
        if self._signs is None:
            parts = []
            for b, lo in enumerate(range(0, self.dim, self._SIGN_BLOCK)):
                n = min(self._SIGN_BLOCK, self.dim - lo)
                g = make_generator(self.seed, "srht-signs", b)
                parts.append(torch.randint(0, 2, (n,), generator=g, dtype=torch.int8))
            self._signs = torch.cat(parts).to(torch.float32).mul_(2).sub_(1)
        return self._signs

    def rows(self) -> torch.Tensor:
        """The s sampled coordinates of the transformed (padded) vector."""
        if self._rows is None:
            g = make_generator(self.seed, "srht-rows")
            self._rows = torch.randperm(self.padded_dim, generator=g)[: self._s].clone()
        return self._rows

    def _scale(self) -> float:
        return 1.0 / math.sqrt(self._s)  # √(D/s) · 1/√D

    def sketch(self, x: torch.Tensor) -> torch.Tensor:
        xb, squeeze = _as_batch(x.to(torch.float32), self.dim)
        z = torch.zeros(xb.shape[0], self.padded_dim, device=xb.device)
        z[:, : self.dim] = xb * self.signs().to(xb.device)
        y = fwht(z)[:, self.rows().to(xb.device)] * self._scale()
        return y[0] if squeeze else y

    def desketch(self, y: torch.Tensor) -> torch.Tensor:
        yb, squeeze = _as_batch(y.to(torch.float32), self._s)
        z = torch.zeros(yb.shape[0], self.padded_dim, device=yb.device)
        z[:, self.rows().to(yb.device)] = yb * self._scale()
        out = fwht(z)[:, : self.dim] * self.signs().to(yb.device)
        return out[0] if squeeze else out


class CountSketch(SketchOperator):
    """CountSketch / AMS table with ``rows`` × ``cols`` buckets, hashes computed from the seed.

    Charikar, Chen, Farach-Colton (2002) sketch as used by FetchSGD (Rothchild et al., ICML 2020) and CSVec:
    row j adds σ_j(i)·x_i into bucket h_j(i). Bucket and sign hashes are multiply-add-shift hashes
    (Dietzfelbinger 1996; 2-wise independent) with coefficients from the seed, so hashes of any index range
    are computed on demand (chunks of ``chunk_size`` coordinates, memory O(rows·chunk)), and kept when rows·d
    ≤ :data:`HASH_CACHE_ELEMENTS`. CSVec uses 4-wise independent signs (polynomials mod a prime); pairwise
    independence is what the CountSketch estimates (unbiased mean, median heavy hitters) need, and avoids
    int64 modulo, which was 3× slower here.

    ``desketch`` is the unbiased linear estimate x̂_i = mean_j σ_j(i)·T[j, h_j(i)] (= Rᵀy/rows, E = x); the
    median over rows (:meth:`estimate`) is the robust heavy-hitter estimate used by :meth:`unsketch_topk`.
    Indices must be < 2³¹.

    Parameters
    ----------
    dim, seed
        See :class:`SketchOperator`.
    rows, cols
        Table shape r × c; s = r·c.
    chunk_size
        Coordinates hashed at once; ``None`` picks about :data:`DEFAULT_CHUNK_ELEMENTS` / rows. Results do not
        depend on it (bucket sums may differ by float32 round-off only).
    """

    def __init__(self, dim: int, seed: int, *, rows: int, cols: int, chunk_size: int | None = None) -> None:
        super().__init__(dim, seed)
        if rows < 1 or cols < 1:
            raise ValueError(f"rows and cols must be positive, got {rows}, {cols}")
        if dim >= 1 << 31:
            raise ValueError("dim must be < 2**31")
        self.rows, self.cols = int(rows), int(cols)
        self.chunk_size = int(chunk_size) if chunk_size else max(1024, DEFAULT_CHUNK_ELEMENTS // self.rows)
        g = make_generator(self.seed, "count-sketch-hashes")
        # odd multipliers and offsets of two multiply-add-shift hashes per row (buckets, signs)
        # all 64 bits uniform (the family's universality needs them; int64 arithmetic wraps mod 2⁶⁴)
        self._coef = torch.randint(-(1 << 63), (1 << 63) - 1, (self.rows, 4), generator=g, dtype=torch.int64)
        self._coef[:, 0::2] |= 1
        self._cached: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.rows * self.dim <= HASH_CACHE_ELEMENTS:
            b, sg = self._compute_hashes(0, self.dim)
            self._cached = (b.to(torch.int32), sg.to(torch.int8))

    @property
    def sketch_dim(self) -> int:
        return self.rows * self.cols

    def _compute_hashes(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.arange(start, stop, dtype=torch.int64).unsqueeze(0)
        c = self._coef
        # (a·i + b) mod 2⁶⁴ (int64 wrap-around), bits 32..63 as a uniform 32-bit value
        u = ((c[:, 0:1] * i + c[:, 1:2]) >> 32) & 0xFFFFFFFF
        buckets = (u * self.cols) >> 32
        v = ((c[:, 2:3] * i + c[:, 3:4]) >> 63) & 1
        return buckets, v.to(torch.float32).mul_(2).sub_(1)

    def hashes(
        self,
        start: int,
        stop: int,
        *,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bucket indices (rows, n; int32 or int64) and signs (rows, n) float32 of coordinates
        start..stop−1."""
        if self._cached is not None:
            if self._cached[0].device != torch.device(device):
                self._cached = (self._cached[0].to(device), self._cached[1].to(device))
            return self._cached[0][:, start:stop], self._cached[1][:, start:stop].to(torch.float32)
        b, s = self._compute_hashes(start, stop)
        return b.to(device), s.to(device)

    def _ranges(self):  # type: ignore[no-untyped-def]
        for start in range(0, self.dim, self.chunk_size):
            yield start, min(start + self.chunk_size, self.dim)

    def sketch(self, x: torch.Tensor) -> torch.Tensor:
        xb, squeeze = _as_batch(x.to(torch.float32), self.dim)
        n = xb.shape[0]
        table = torch.zeros(n, self.rows, self.cols, device=xb.device)
        for start, stop in self._ranges():
            buckets, signs = self.hashes(start, stop, device=xb.device)
            part = xb[:, start:stop]
            for j in range(self.rows):
                # int64 indices: index_add_ along dim 1 is ~30× slower with int32 ones (torch 2.13, CPU)
                table[:, j].index_add_(1, buckets[j].long(), part * signs[j])
        y = table.reshape(n, self.sketch_dim)
        return y[0] if squeeze else y

    def _row_estimates(self, yb: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """(n, rows, stop−start): σ_j(i)·T[j, h_j(i)] for each row j."""
        table = yb.reshape(yb.shape[0], self.rows, self.cols)
        buckets, signs = self.hashes(start, stop, device=yb.device)
        return torch.stack([table[:, j, buckets[j]] * signs[j] for j in range(self.rows)], dim=1)

    def estimate(self, y: torch.Tensor, *, method: str = "median") -> torch.Tensor:
        """Per-coordinate estimates from a table: ``"median"`` or ``"mean"`` over rows; shape like
        desketch."""
        if method not in ("median", "mean"):
            raise ValueError(f"method must be 'median' or 'mean', got {method!r}")
        yb, squeeze = _as_batch(y.to(torch.float32), self.sketch_dim)
        out = torch.empty(yb.shape[0], self.dim, device=yb.device)
        for start, stop in self._ranges():
            est = self._row_estimates(yb, start, stop)
            if method == "mean":
                out[:, start:stop] = est.mean(1)
            elif self.rows % 2:
                out[:, start:stop] = est.median(1).values
            else:  # torch.median takes the lower middle; the usual median averages the two middle rows
                srt = est.sort(1).values
                out[:, start:stop] = 0.5 * (srt[:, self.rows // 2 - 1] + srt[:, self.rows // 2])
        return out[0] if squeeze else out

    def desketch(self, y: torch.Tensor) -> torch.Tensor:
        return self.estimate(y, method="mean")

    def unsketch_topk(self, y: torch.Tensor, k: int) -> torch.Tensor:
        """The dense vector keeping the k coordinates of largest |median estimate|
        (FetchSGD's unSketch(S, k))."""
        if y.dim() != 1:
            raise ValueError("unsketch_topk takes one table")
        k = min(int(k), self.dim)
        est = self.estimate(y, method="median")
        out = torch.zeros(self.dim, device=y.device)
        if k > 0:
            idx = est.abs().topk(k, sorted=False).indices
            out[idx] = est[idx]
        return out


def derive_operator_seed(*parts: object) -> int:
    """The seed of a sketch operator from public parts (scenario seed, round, purpose)."""
    return derive_seed("sketch-operator", *parts)
