"""Step 7 of a round: validate the replies. Bad replies are rejected and recorded, never averaged.

The engine turns what arrived into :class:`Candidate` s (the Flower adapter: :func:`simulator.flower.unpack`);
:func:`validate_replies` checks each against the compressor's payload spec and the round's cohort.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from simulator.sketching.base import ArraySpec

__all__ = ["Candidate", "ValidReply", "Verdicts", "validate_replies"]


@dataclass(frozen=True)
class Candidate:
    """One reply as it arrived: its sender's partition (−1 if unknown), its arrays and metrics, or ``failed``
    (the client reported an error: nothing to validate) or ``malformed`` (the message could not be read)."""

    partition_id: int
    arrays: Mapping[str, np.ndarray] | None = None
    metrics: Mapping[str, Any] | None = None
    failed: str | None = None
    malformed: str | None = None


@dataclass
class ValidReply:
    partition_id: int
    num_examples: int
    arrays: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    nbytes: int


@dataclass
class Verdicts:
    valid: list[ValidReply] = field(default_factory=list)  # sorted by partition id
    rejected: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    bytes_up: int = 0


def _check_arrays(arrays: Mapping[str, np.ndarray], spec: dict[str, ArraySpec]) -> str | None:
    missing = sorted(set(spec) - set(arrays))
    extra = sorted(set(arrays) - set(spec))
    if missing or extra:
        return f"payload keys: missing {missing}, unexpected {extra}"
    for name, sp in spec.items():
        a = arrays[name]
        if not isinstance(a, np.ndarray):
            return f"payload {name!r}: {type(a).__name__}, expected an array"
        if tuple(a.shape) != tuple(sp.shape):
            return f"payload {name!r}: shape {tuple(a.shape)}, expected {tuple(sp.shape)}"
        if str(a.dtype) != sp.dtype:
            return f"payload {name!r}: dtype {a.dtype}, expected {sp.dtype}"
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return f"payload {name!r}: {int((~np.isfinite(a)).sum())} non-finite values"
    return None


def _problem(c: Candidate, spec: dict[str, ArraySpec], expected: set[int], seen: set[int]) -> str | None:
    if c.malformed is not None:
        return c.malformed
    if c.arrays is None or c.metrics is None:
        return f"reply lacks {'arrays' if c.arrays is None else 'metrics'}"
    n = c.metrics.get("num-examples")
    if not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0:
        return f"num-examples is {n!r}, expected a positive number"
    if c.partition_id not in expected or c.partition_id in seen:
        return f"reply from partition {c.partition_id}, which was not asked this round or answered twice"
    bad = _check_arrays(c.arrays, spec)
    if bad:
        return bad
    for k, v in c.metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            return f"metric {k!r} is {v}"
    return None


def validate_replies(
    candidates: list[Candidate], *, spec: dict[str, ArraySpec], expected: set[int]
) -> Verdicts:
    """Sort replies into valid / rejected / failed; each rejection carries the partition and reason."""
    out = Verdicts()
    seen: set[int] = set()
    for c in candidates:
        if c.failed is not None:
            out.failed.append({"partition": c.partition_id, "reason": c.failed[:500]})
            continue
        why = _problem(c, spec, expected, seen)
        if why is not None:
            out.rejected.append({"partition": c.partition_id, "reason": why[:500]})
            continue
        assert c.arrays is not None and c.metrics is not None  # _problem checked both
        seen.add(c.partition_id)
        nbytes = int(sum(a.nbytes for a in c.arrays.values()))
        out.bytes_up += nbytes
        out.valid.append(
            ValidReply(
                c.partition_id,
                int(c.metrics["num-examples"]),
                {k: torch.from_numpy(np.array(a)) for k, a in c.arrays.items()},
                dict(c.metrics),
                nbytes,
            )
        )
    out.valid.sort(key=lambda r: r.partition_id)
    return out
