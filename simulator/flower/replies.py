"""Step 7: validate client replies. Bad replies are rejected and recorded, never averaged."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Message

from simulator.sketching.base import ArraySpec

__all__ = ["ValidReply", "Verdicts", "validate_replies"]


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


def _check_arrays(arrays: dict[str, np.ndarray], spec: dict[str, ArraySpec]) -> str | None:
    missing = sorted(set(spec) - set(arrays))
    extra = sorted(set(arrays) - set(spec))
    if missing or extra:
        return f"payload keys: missing {missing}, unexpected {extra}"
    for name, sp in spec.items():
        a = arrays[name]
        if tuple(a.shape) != tuple(sp.shape):
            return f"payload {name!r}: shape {tuple(a.shape)}, expected {tuple(sp.shape)}"
        if str(a.dtype) != sp.dtype:
            return f"payload {name!r}: dtype {a.dtype}, expected {sp.dtype}"
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return f"payload {name!r}: {int((~np.isfinite(a)).sum())} non-finite values"
    return None


def validate_replies(replies: list[Message], *, spec: dict[str, ArraySpec],
                     partition_of: dict[int, int], expected: set[int]) -> Verdicts:
    """Sort replies into valid / rejected / failed; each rejection carries the partition and reason."""
    out = Verdicts()
    seen: set[int] = set()
    for msg in replies:
        pid = partition_of.get(msg.metadata.src_node_id, -1)
        if msg.has_error():
            out.failed.append({"partition": pid, "reason": str(msg.error.reason)[:500]})
            continue
        try:
            content = msg.content
            if "arrays" not in content or "metrics" not in content:
                raise ValueError(f"reply lacks {'arrays' if 'arrays' not in content else 'metrics'}")
            rec = content["arrays"]
            # untrusted: a record that is not an ArrayRecord fails here and is rejected below
            arrays = {k: v.numpy() for k, v in rec.items()}  # type: ignore[union-attr]
            metrics = dict(content["metrics"])
            n = metrics.get("num-examples")
            if not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0:
                raise ValueError(f"num-examples is {n!r}, expected a positive number")
            if pid not in expected or pid in seen:
                raise ValueError(f"reply from partition {pid}, which was not asked this round or answered twice")
            bad = _check_arrays(arrays, spec)
            if bad:
                raise ValueError(bad)
            for k, v in metrics.items():
                if isinstance(v, float) and not math.isfinite(v):
                    raise ValueError(f"metric {k!r} is {v}")
        except Exception as e:  # noqa: BLE001 - any malformed reply is a rejection, not a crash
            out.rejected.append({"partition": pid, "reason": str(e)[:500]})
            continue
        seen.add(pid)
        nbytes = int(sum(a.nbytes for a in arrays.values()))
        out.bytes_up += nbytes
        out.valid.append(ValidReply(pid, int(n), {k: torch.from_numpy(np.array(a)) for k, a in arrays.items()},
                                    metrics, nbytes))
    out.valid.sort(key=lambda r: r.partition_id)
    return out
