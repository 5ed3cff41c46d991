"""The numerics of Flower's SecAgg+ as a fast simulated secure aggregation (no cryptography).

SecAgg+ is the protocol of Bell, Bonawitz, Gascón, Lepoint and Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Complexity", CCS 2020. The *encoding* reproduced here — how float updates become integers
mod ``modulus`` and come back — is Flower's (flwr 1.41.0: ``flwr.client.mod.secaggplus_mod``,
``flwr.common.secure_aggregation.quantization``, ``flwr.server.workflow.SecAggPlusWorkflow``), which is the
reference the numbers here are tested against, value for value.

Data flow of one round (Flower's, with this module's names):

1. client (``encode_client``): ``ratio = num_examples / max_weight`` (not clipped: Flower only logs an
   "overflow" warning when it exceeds 1); the weight is quantised to the integer
   ``weight_factor = round(ratio · quantization_range)`` (Python's round, half to even), and the update is
   multiplied by ``weight_factor / quantization_range`` *in the update's dtype* (float32 for a torch model);
2. client: each weighted value is clipped to ``±clipping_range`` — after weighting, so the effective clip of
   the raw update is ``clipping_range · max_weight / num_examples`` — shifted by ``+clipping_range`` and
   scaled by ``quantization_range / (2·clipping_range)`` onto ``[0, quantization_range]``, then stochastically
   rounded (down with probability ``ceil(x) − x``);
3. client: ``[weight_factor, q_1 … q_d]`` plus its private mask and pairwise masks, mod ``modulus``, is what
   it uploads. The masks cancel in the server's sum (pairwise masks by construction, private masks once the
   server rebuilds them from the unmask-stage shares), so they are omitted here: the sum of the unmasked
   vectors mod ``modulus`` is exactly what the server holds after unmasking;
4. server (``aggregate``): the sum mod ``modulus`` gives ``Σ weight_factor`` and ``Σ q``; it dequantises
   ``Σq · 2c/Q − c``, subtracts ``(n − 1)·c`` for the other ``n − 1`` clients' offsets, and multiplies by
   ``Q / Σ weight_factor``: the result is the weighted mean ``Σ w_i Δ_i / Σ w_i`` (weights ``w_i`` = the
   quantised ``num_examples / max_weight``) plus the quantisation error, in float64;
5. server: Flower's workflow then writes that one vector into *every* client's legacy ``FitRes`` (each keeping
   its own ``num_examples`` and metrics, which travel in the clear) and calls ``Strategy.aggregate_fit``:
   FedAvg's weighted average of identical vectors hands back the same vector (up to float64 rounding).

What the server learns: the aggregate, the number of clients ``n`` in the sum, the total quantised weight
``Σ weight_factor`` — and, on Flower's legacy path, every client's ``num_examples`` and metrics in plaintext.

Precision: one quantisation step is ``Δ = 2·clipping_range / quantization_range`` (3.8e-6 with the defaults)
of the *weighted* value, i.e. ``Δ · max_weight / num_examples`` of the update itself. With Flower's default
``max_weight = 1000`` and 10 examples per client that is 3.8e-4 per coordinate — 100 times coarser than with
``max_weight = 10`` — which is what :func:`precision_problems` reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SecAggParams",
    "SecAggResult",
    "aggregate",
    "encode_client",
    "error_bound",
    "error_rms",
    "precision_problems",
    "quantization_step",
    "relative_error_bound",
    "secure_mean",
    "simulate",
    "weight_factor",
]

_FIELD = "secure_aggregation"


@dataclass(frozen=True)
class SecAggParams:
    """Flower's SecAgg+ quantisation parameters, with ``SecAggPlusWorkflow``'s defaults (flwr 1.41.0).

    ``modulus`` is Flower's ``modulus_range``. Checked as Flower checks them, plus ``clipping_range > 0``
    (Flower 1.41 divides by zero at 0 and silently corrupts the aggregate when it is negative).
    """

    clipping_range: float = 8.0
    quantization_range: int = 4194304  # 2**22
    modulus: int = 4294967296  # 2**32
    max_weight: float = 1000.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clipping_range) and self.clipping_range > 0):
            raise ValueError(f"clipping_range must be finite and > 0, got {self.clipping_range}")
        if (
            isinstance(self.quantization_range, bool)
            or not isinstance(self.quantization_range, int)
            or self.quantization_range <= 0
        ):
            raise ValueError(f"quantization_range must be an integer > 0, got {self.quantization_range!r}")
        if (
            isinstance(self.modulus, bool)
            or not isinstance(self.modulus, int)
            or self.modulus <= self.quantization_range
        ):
            raise ValueError(f"modulus must be an integer > quantization_range, got {self.modulus!r}")
        if self.modulus & (self.modulus - 1) or self.modulus > 2**63:
            raise ValueError(f"modulus must be a power of 2 no larger than 2**63, got {self.modulus}")
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise ValueError(f"max_weight must be finite and > 0, got {self.max_weight}")


@dataclass(frozen=True)
class SecAggResult:
    """One simulated SecAgg+ round: the aggregate and what the protocol reveals beside it.

    ``aggregate``: float64 (d,), the weighted mean the strategy receives. ``count``: clients in the sum.
    ``total_weight``: ``Σ weight_factor / quantization_range`` (≈ Σ num_examples / max_weight), revealed by
    the unmasked sum. ``max_abs_error_bound``: a bound on ``|aggregate − Σ n_i Δ_i / Σ n_i|`` in every
    coordinate (quantisation, weight rounding and clipping, all included). ``num_clipped``: weighted values
    that hit ``±clipping_range``.
    """

    aggregate: Tensor
    count: int
    total_weight: float
    max_abs_error_bound: float
    num_clipped: int = 0


# ---------------------------------------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------------------------------------


def weight_factor(num_examples: int, params: SecAggParams) -> int:
    """The integer weight a client appends to its vector: ``round(num_examples / max_weight · Q)``."""
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    return round(num_examples / params.max_weight * params.quantization_range)


def _as_numpy(update: Tensor) -> np.ndarray:
    """The array Flower would receive: float64 stays float64, any other float becomes float32."""
    if update.ndim != 1:
        raise ValueError(f"update must be a flat (d,) vector, got shape {tuple(update.shape)}")
    if not update.is_floating_point():
        raise TypeError(f"update must be floating point, got {update.dtype}")
    dtype = torch.float64 if update.dtype == torch.float64 else torch.float32
    arr = update.detach().to(device="cpu", dtype=dtype).numpy()
    if not np.isfinite(arr).all():
        raise ValueError("update has non-finite values; SecAgg+ cannot encode NaN or inf")
    return arr


def encode_client(
    update: Tensor, num_examples: int, params: SecAggParams, *, generator: torch.Generator
) -> tuple[np.ndarray, int]:
    """What one client contributes to the SecAgg+ sum: ``(q, weight_factor)``.

    ``q`` is int64 (d,) in ``[0, quantization_range]``: the update weighted by ``weight_factor / Q``, clipped
    to ``±clipping_range``, shifted and stochastically rounded, computed in the update's dtype as Flower does.
    The masks are left out: pairwise masks cancel in the sum mod ``modulus`` and private masks are removed by
    the server, so the unmasked sum is the same. ``generator`` (CPU) draws the ``d`` float64 uniforms of the
    stochastic rounding (Flower draws them from NumPy's global RNG).
    """
    arr = _as_numpy(update)
    wf = weight_factor(num_examples, params)
    c, big_q = params.clipping_range, params.quantization_range
    weighted = arr * (wf / big_q)  # a Python float scalar keeps the array's dtype (NEP 50)
    x = (np.clip(weighted, -c, c) + c) * (big_q / (2 * c))
    up = np.ceil(x).astype(np.int64)
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64).numpy()
    q = up - (u < up - x)  # round down with probability ceil(x) − x
    return q, wf


# ---------------------------------------------------------------------------------------------------------
# Server side
# ---------------------------------------------------------------------------------------------------------


def _unmasked_sum(
    encoded: Sequence[np.ndarray], weight_factors: Sequence[int], params: SecAggParams
) -> tuple[np.ndarray, int]:
    if len(encoded) != len(weight_factors):
        raise ValueError(f"{len(encoded)} encoded vectors but {len(weight_factors)} weight factors")
    if len(encoded) == 0:
        raise ValueError("no client to aggregate")
    m = np.uint64(params.modulus - 1)  # modulus is a power of 2: mod is a mask
    total = np.zeros(np.shape(encoded[0]), dtype=np.uint64)
    for q in encoded:
        if np.shape(q) != total.shape:
            raise ValueError(f"encoded vectors differ in shape: {np.shape(q)} vs {total.shape}")
        total = (total + np.asarray(q).astype(np.uint64)) & m
    return total, sum(int(w) for w in weight_factors) % params.modulus


def aggregate(encoded: Sequence[np.ndarray], weight_factors: Sequence[int], params: SecAggParams) -> Tensor:
    """The server's side: sum mod ``modulus``, dequantise, remove the clients' offsets, un-weight.

    Returns the float64 (d,) weighted mean that Flower's workflow hands to ``Strategy.aggregate_fit`` (in
    every client's ``FitRes``). The clients in the sum (``len(encoded)``) and ``Σ weight_factors``
    are revealed.
    """
    total, total_wf = _unmasked_sum(encoded, weight_factors, params)
    if total_wf == 0:
        raise ValueError(
            "the total weight is 0 mod modulus: every client's num_examples / max_weight rounds to "
            "0, or the sum of the weights overflowed"
        )
    c, big_q = params.clipping_range, params.quantization_range
    vec = total.astype(np.float64) * (2 * c / big_q) - c
    vec += -(len(encoded) - 1) * c
    vec *= big_q / total_wf
    return torch.from_numpy(vec)


# ---------------------------------------------------------------------------------------------------------
# Error bounds and the precision check
# ---------------------------------------------------------------------------------------------------------


def quantization_step(params: SecAggParams) -> float:
    """One quantisation level of a weighted value: ``2 · clipping_range / quantization_range``."""
    return 2 * params.clipping_range / params.quantization_range


def _fp_slack_steps(params: SecAggParams, dtype: torch.dtype) -> float:
    """Bound, in quantisation steps, on the client's floating-point error before stochastic rounding.

    Weighting (scalar and product roundings), the ``+c`` shift and the scaling each round once in the update's
    dtype (unit roundoff u): ≤ 1.01·uQ + uQ + (0 if ``Q/2c`` is a power of 2, else 2.01·uQ).
    """
    u = float(torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps) / 2
    big_q = params.quantization_range
    scale = big_q / (2 * params.clipping_range)
    exact_scale = math.frexp(scale)[0] == 0.5
    return u * big_q * (1.01 + 1.0 + (0.0 if exact_scale else 2.01))


def _counts(num_examples: Sequence[int] | int) -> list[int]:
    return [int(num_examples)] if isinstance(num_examples, int) else [int(n) for n in num_examples]


def error_bound(
    num_examples: Sequence[int] | int, params: SecAggParams, *, dtype: torch.dtype = torch.float32
) -> float:
    """Worst-case absolute error of one aggregate coordinate from quantisation (no clipping).

    ``Σ_i (1 + fp) · Δ / Σ_i w_i``: each client's stochastic rounding is off by less than one step ``Δ`` of
    its weighted value (plus ``fp`` steps of float error in ``dtype``), and the server divides by the total
    weight. For equal counts this is ``(1 + fp) · Δ · max_weight / num_examples``;
    an int is one client's count.
    """
    counts = _counts(num_examples)
    total = sum(weight_factor(n, params) for n in counts) / params.quantization_range
    if total == 0:
        return math.inf
    step = quantization_step(params) * (1 + _fp_slack_steps(params, dtype))
    return len(counts) * step / total


def error_rms(num_examples: Sequence[int] | int, params: SecAggParams) -> float:
    """Typical (RMS) error of one aggregate coordinate: ``Δ · sqrt(n / 6) / Σ_i w_i``.

    Stochastic rounding with a uniformly distributed fractional part has variance ``Δ²/6`` (at most ``Δ²/4``).
    """
    counts = _counts(num_examples)
    total = sum(weight_factor(n, params) for n in counts) / params.quantization_range
    if total == 0:
        return math.inf
    return quantization_step(params) * math.sqrt(len(counts) / 6) / total


def relative_error_bound(
    num_examples: Sequence[int] | int,
    params: SecAggParams,
    *,
    update_scale: float,
    dtype: torch.dtype = torch.float32,
) -> float:
    """:func:`error_bound` relative to ``update_scale``, the size of an aggregate coordinate."""
    if not update_scale > 0:
        raise ValueError(f"update_scale must be > 0, got {update_scale}")
    return error_bound(num_examples, params, dtype=dtype) / update_scale


def precision_problems(
    num_examples: Sequence[int] | int,
    params: SecAggParams,
    *,
    update_scale: float = 1e-3,
    tolerance: float = 0.01,
) -> list[str]:
    """Everything that would make Flower's SecAgg+ encoding lose precision or overflow, each with its fix.

    ``num_examples``: the clients' example counts (a sequence: one round's cohort), or one typical count.
    ``update_scale``: the size of a coordinate of the aggregate (1e-3: a one-round model delta); the
    precision problem fires when :func:`error_bound` exceeds ``tolerance · update_scale``.
    Why precision is lost: Flower weights *before* quantising, so a client whose ``num_examples / max_weight``
    is 0.01 occupies 1 % of the ±clipping_range grid and, once the server divides the weight back out, each
    quantisation step is 100 × ``2·clipping_range / quantization_range`` of the update.
    """
    counts = _counts(num_examples)
    out: list[str] = []
    if any(n < 0 for n in counts):
        return [f"num_examples must be >= 0, got {min(counts)}"]
    if not counts or max(counts) == 0:
        return [f"no client has examples: the total weight would be 0 (counts {counts})"]
    big_q, mw = params.quantization_range, params.max_weight
    n_max = max(counts)
    fix = f"set {_FIELD}.max_weight = {n_max} (the largest client example count)"
    zero = [n for n in counts if n > 0 and weight_factor(n, params) == 0]
    if zero:
        out.append(
            f"{_FIELD}.max_weight = {mw:g}: a client with {min(zero)} examples gets weight "
            f"round({min(zero)} / {mw:g} · {big_q}) = 0 and drops out of the aggregate; {fix}"
        )
    if n_max > mw:
        out.append(
            f"{_FIELD}.max_weight = {mw:g} is below the largest client example count {n_max}: that "
            f"client's update is clipped at clipping_range · max_weight / num_examples = "
            f"{params.clipping_range * mw / n_max:.3g} instead of {params.clipping_range:g} (Flower warns "
            f"of overflow); {fix}"
        )
    if not isinstance(num_examples, int):
        total_wf = sum(weight_factor(n, params) for n in counts)
        if total_wf >= params.modulus:
            need = sum(counts) * big_q / params.modulus
            out.append(
                f"{_FIELD}.max_weight = {mw:g}: the clients' total weight {total_wf} (Σ num_examples / "
                f"max_weight in units of 1/quantization_range) reaches modulus = {params.modulus} and "
                f"wraps around; raise {_FIELD}.max_weight above {need:g} or sample fewer clients"
            )
        if len(counts) * big_q >= params.modulus:
            out.append(
                f"{_FIELD}.modulus = {params.modulus}: {len(counts)} clients × quantization_range "
                f"{big_q} can reach the modulus, so the sum can wrap around; use at most "
                f"{(params.modulus - 1) // big_q} clients per round, or a larger modulus"
            )
    bound = error_bound(counts, params)
    if math.isfinite(bound) and bound > tolerance * update_scale:
        better = error_bound(counts, SecAggParams(params.clipping_range, big_q, params.modulus, float(n_max)))
        out.append(
            f"{_FIELD}.max_weight = {mw:g} with clients of {_describe(counts)} examples loses "
            f"precision: each aggregate coordinate can be off by {bound:.3g} "
            f"({bound / update_scale:.1%} of an update coordinate of size {update_scale:g}; one "
            f"quantisation step is 2·clipping_range/quantization_range · max_weight/num_examples); "
            f"{fix}, which bounds it by {better:.3g}"
        )
    return out


def _describe(counts: list[int]) -> str:
    lo, hi = min(counts), max(counts)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


# ---------------------------------------------------------------------------------------------------------
# One round
# ---------------------------------------------------------------------------------------------------------


def secure_mean(
    updates: Tensor, num_examples: Sequence[int], params: SecAggParams, *, generator: torch.Generator
) -> Tensor:
    """:func:`simulate`'s aggregate, vectorised over the clients and without the error bound: what the runtime
    calls every round. Same encoding, same draws (the ``(n, d)`` uniforms in row order), same float64 result.

    >>> u = torch.tensor([[0.5, -0.25], [0.125, 1.0]])
    >>> g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    >>> p = SecAggParams(max_weight=4.0)
    >>> bool(torch.equal(secure_mean(u, [2, 4], p, generator=g1),
    ...                  simulate(u, [2, 4], p, generator=g2).aggregate))
    True
    """
    if updates.ndim != 2 or updates.shape[0] != len(num_examples):
        raise ValueError(f"updates must be (n, d) with n = {len(num_examples)}, got {tuple(updates.shape)}")
    if not updates.is_floating_point():
        raise TypeError(f"updates must be floating point, got {updates.dtype}")
    dtype = torch.float64 if updates.dtype == torch.float64 else torch.float32
    a = updates.detach().to(device="cpu", dtype=dtype)
    if not bool(torch.isfinite(a).all()):
        raise ValueError("update has non-finite values; SecAgg+ cannot encode NaN or inf")
    wfs = [weight_factor(int(k), params) for k in num_examples]
    total_wf = sum(wfs) % params.modulus
    if total_wf == 0:
        raise ValueError(
            "the total weight is 0 mod modulus: every client's num_examples / max_weight rounds to "
            "0, or the sum of the weights overflowed"
        )
    c, big_q = params.clipping_range, params.quantization_range
    scale = torch.tensor(big_q / (2 * c), dtype=dtype)
    d = a.shape[1]
    ups = torch.zeros(d, dtype=torch.float64)  # Σ_i ceil(x_i): integers below n·2^24, exact in float64
    downs = torch.zeros(d, dtype=torch.int64)  # Σ_i [client i rounds down]
    x, up = torch.empty(d, dtype=dtype), torch.empty(d, dtype=dtype)
    u, down = torch.empty(d, dtype=torch.float64), torch.empty(d, dtype=torch.bool)
    for row, wf in zip(a, wfs, strict=True):  # one client at a time: buffers stay small and are reused
        torch.mul(row, torch.tensor(wf / big_q, dtype=torch.float64).to(dtype), out=x)
        x.clamp_(-c, c).add_(c).mul_(scale)
        torch.ceil(x, out=up)
        ups += up
        # up − x is exact in x's dtype (Sterbenz: both within one unit, below 2^24), so comparing the float64
        # uniforms with it decides exactly as Flower's float64 ``u < up − x`` does
        u.uniform_(0.0, 1.0, generator=generator)
        torch.lt(u, up.sub_(x), out=down)
        downs += down
    total = (ups.to(torch.int64) - downs) % params.modulus
    vec = total.to(torch.float64) * (2 * c / big_q) - c
    vec += -(len(wfs) - 1) * c
    vec *= big_q / total_wf
    return vec


def simulate(
    updates: Tensor, num_examples: Sequence[int], params: SecAggParams, *, generator: torch.Generator
) -> SecAggResult:
    """Encode every row of ``updates`` (n, d), aggregate, and bound the error against the exact weighted mean.

    Clients are encoded in row order, each drawing its ``d`` uniforms from ``generator`` in turn.
    """
    if updates.ndim != 2:
        raise ValueError(f"updates must be (n, d), got shape {tuple(updates.shape)}")
    if len(num_examples) != updates.shape[0]:
        raise ValueError(f"{updates.shape[0]} updates but {len(num_examples)} example counts")
    encoded, wfs = [], []
    for row, n in zip(updates, num_examples, strict=True):
        q, wf = encode_client(row, int(n), params, generator=generator)
        encoded.append(q)
        wfs.append(wf)
    agg = aggregate(encoded, wfs, params)
    big_q, c = params.quantization_range, params.clipping_range

    # The bound: weight rounding + clipping (both from the data) + quantisation + float64 slack.
    p = torch.stack([torch.from_numpy(_as_numpy(r)) for r in updates]).to(torch.float64).numpy()
    counts = np.asarray([int(n) for n in num_examples], dtype=np.float64)
    dq = np.asarray(wfs, dtype=np.float64) / big_q
    total = float(dq.sum())
    exact = counts @ p / counts.sum()
    weighted = dq[:, None] * p
    clip_err = float(np.abs((np.clip(weighted, -c, c) - weighted).sum(axis=0)).max()) / total
    weight_err = float(np.abs(dq @ p / total - exact).max())
    n = len(encoded)
    quant = error_bound([int(k) for k in num_examples], params, dtype=updates.dtype)
    eps = float(np.finfo(np.float64).eps)
    slack = 8 * eps * (n * c / total + float(np.abs(exact).max()) + weight_err)
    num_clipped = sum(
        int((np.abs(_as_numpy(r) * (wf / big_q)) > c).sum()) for r, wf in zip(updates, wfs, strict=True)
    )
    return SecAggResult(
        aggregate=agg,
        count=n,
        total_weight=total,
        max_abs_error_bound=weight_err + clip_err + quant + slack,
        num_clipped=num_clipped,
    )
