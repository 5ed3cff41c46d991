"""Which memory format local training uses (``simulation.memory_format``).

Channels-last (NHWC) stores a 4-d tensor with the channels innermost. On a CPU, oneDNN's convolutions are
faster on it for some models and slower for others (``benchmarks/bench_compile.py``, ms per local step at
batch 32, one thread: the quickstart CNN 56.2 → 47.3, LeNet 7.6 → 5.6, ResNet-18 with group norm 150 → 221).
A model class says it gains with ``channels_last_pays = True``; ``auto`` uses channels-last for those, on a
CPU. The numerics differ (other kernels sum in another order, ~1e-7 per step), so every path that trains the
plain recipe takes the same format: :func:`simulator.training.train_local` converts the model for the
training and back, and the vectorised cohort's exact kernels give each client's call the formats the
per-client loop has (:mod:`simulator.exact_kernels`), so the two stay bit-identical.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

__all__ = ["MemoryFormat", "channels_last_for", "why_not_channels_last"]

MemoryFormat = Literal["auto", "contiguous", "channels_last"]


def why_not_channels_last(model: nn.Module) -> str | None:
    """Why this model cannot train in channels-last, or None. GroupNorm: PyTorch 2.13's CPU backward of a
    channels-last group norm corrupts the heap (measured: the process aborts in ``loss.backward``)."""
    if any(isinstance(m, nn.GroupNorm) for m in model.modules()):
        return "its GroupNorm layers abort in PyTorch's channels-last backward"
    return None


def channels_last_for(model: nn.Module, setting: MemoryFormat, device: str = "cpu") -> bool:
    """Whether local training of ``model`` uses channels-last: ``"auto"`` where the model's class measured a
    gain (``channels_last_pays``) on a CPU; ``"channels_last"`` always, refused (``ValueError``) where it
    cannot run.

    >>> from simulator.models import build_model
    >>> cnn = build_model("cnn", {}, input_shape=(1, 28, 28), num_classes=10, seed=0)
    >>> [channels_last_for(cnn, f, d) for f, d in [("auto", "cpu"), ("auto", "cuda"), ("contiguous", "cpu")]]
    [True, False, False]
    """
    if setting == "contiguous":
        return False
    why = why_not_channels_last(model)
    if setting == "channels_last":
        if why is not None:
            name = type(model).__name__
            raise ValueError(f"'channels_last' cannot train {name}: {why}; use 'auto' or 'contiguous'")
        return True
    return device.startswith("cpu") and bool(getattr(model, "channels_last_pays", False)) and why is None
