"""Pixel triggers and the data-poisoning attacks built on them (BadNets, DBA).

A trigger is a set of pixel positions that are overwritten with one value on every channel. The
shared :class:`TriggerAttack` turns a trigger into a ClientAttack: it stamps a fraction of the
attacker's training images, relabels them to the target class, and builds the evaluator's
backdoor test set from test images whose true label differs from the target.

References: Gu, Dolan-Gavitt & Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning
Model Supply Chain", arXiv:1708.06733, 2017 (pixel-pattern triggers, all-to-one relabelling);
Xie, Huang, Chen & Li, "DBA: Distributed Backdoor Attacks against Federated Learning", ICLR 2020
(a global trigger split into local stripes).

>>> t = PixelTrigger(((0, 0), (1, 1)), value=1.0)
>>> t.apply(torch.zeros(1, 1, 2, 2))[0, 0].tolist()
[[1.0, 0.0], [0.0, 1.0]]
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch

from attacks.base import ClientAttack
from simulator.context import ClientContext

__all__ = [
    "Corner",
    "PatternShape",
    "PixelTrigger",
    "TriggerAttack",
    "pattern_trigger",
    "poison_with_trigger",
    "stripe_trigger_parts",
    "union",
]

Corner = Literal["top_left", "top_right", "bottom_left", "bottom_right"]
PatternShape = Literal["square", "plus", "L", "checker"]
PoisonMode = Literal["replace", "add"]


@dataclass(frozen=True)
class PixelTrigger:
    """Pixels ``(row, col)`` set to ``value`` on every channel of an image.

    Parameters
    ----------
    pixels
        Non-negative ``(row, col)`` positions; duplicates are ignored.
    value
        The value written there (images live in [0, 1]).
    """

    pixels: tuple[tuple[int, int], ...]
    value: float = 1.0

    def mask(self, height: int, width: int) -> torch.Tensor:
        """Boolean (height, width) mask of the trigger pixels; raises if one falls outside."""
        m = torch.zeros(height, width, dtype=torch.bool)
        for r, c in self.pixels:
            if not (0 <= r < height and 0 <= c < width):
                raise ValueError(f"trigger pixel {(r, c)} lies outside a {height}×{width} image")
            m[r, c] = True
        return m

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of images ``x`` (N, C, H, W) with the trigger stamped on every channel."""
        out = x.clone()
        m = self.mask(int(x.shape[-2]), int(x.shape[-1]))
        out[..., m] = torch.as_tensor(self.value, dtype=x.dtype)
        return out


def union(triggers: list[PixelTrigger]) -> PixelTrigger:
    """One trigger made of every pixel of ``triggers`` (they must share one value)."""
    values = {t.value for t in triggers}
    if len(values) != 1:
        raise ValueError(f"triggers to join must share one value, got {sorted(values)}")
    pixels = sorted({p for t in triggers for p in t.pixels})
    return PixelTrigger(tuple(pixels), values.pop())


def _shape_offsets(shape: PatternShape, size: int) -> list[tuple[int, int]]:
    """(row, col) offsets of a pattern inside its size × size box."""
    box = [(i, j) for i in range(size) for j in range(size)]
    if shape == "square":
        return box
    if shape == "plus":
        mid = size // 2
        return [(i, j) for i, j in box if i == mid or j == mid]
    if shape == "L":
        return [(i, j) for i, j in box if j == 0 or i == size - 1]
    if shape == "checker":
        return [(i, j) for i, j in box if (i + j) % 2 == 0]
    raise ValueError(f"unknown trigger shape {shape!r}")


def pattern_trigger(
    *, shape: PatternShape, size: int, corner: Corner, margin: int, value: float, height: int, width: int
) -> PixelTrigger:
    """A ``shape`` pattern in a size × size box, ``margin`` pixels away from ``corner``.

    >>> t = pattern_trigger(shape="plus", size=3, corner="top_left", margin=0, value=1.0, height=5, width=5)
    >>> t.pixels
    ((0, 1), (1, 0), (1, 1), (1, 2), (2, 1))
    """
    if size < 1 or margin < 0 or size + margin > min(height, width):
        raise ValueError(
            f"a {size}×{size} trigger {margin} px from the edge does not fit a {height}×{width} image"
        )
    r0 = margin if corner.startswith("top") else height - margin - size
    c0 = margin if corner.endswith("left") else width - margin - size
    return PixelTrigger(tuple((r0 + i, c0 + j) for i, j in _shape_offsets(shape, size)), value)


def stripe_trigger_parts(
    *, num_parts: int, stripe_length: int, gap: int, origin: tuple[int, int], value: float
) -> list[PixelTrigger]:
    """DBA's local triggers: 1 × ``stripe_length`` stripes laid out two per row.

    Part ``k`` sits in stripe row ``k // 2`` and stripe column ``k % 2``; stripes are ``gap`` pixels
    apart both ways. With 4 parts, length 4, gap 2 at (0, 0) this is the MNIST layout of the official
    DBA code (rows {0, 3} × columns {0–3, 6–9}); length 6, gap 3 gives its CIFAR-10 layout.
    """
    if num_parts < 1 or stripe_length < 1 or gap < 0:
        raise ValueError("num_parts and stripe_length must be ≥ 1 and gap ≥ 0")
    r0, c0 = origin
    parts = []
    for k in range(num_parts):
        r = r0 + (k // 2) * (gap + 1)
        c = c0 + (k % 2) * (stripe_length + gap)
        parts.append(PixelTrigger(tuple((r, c + j) for j in range(stripe_length)), value))
    return parts


def poison_with_trigger(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    trigger: PixelTrigger,
    target_label: int,
    ratio: float,
    mode: PoisonMode,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stamp ``trigger`` on a seeded ``ratio`` of the training set and relabel those to the target.

    ``mode="replace"`` stamps ``round(ratio·n)`` of the n clean examples in place; ``mode="add"``
    keeps all n clean examples and appends ``round(ratio·n / (1 − ratio))`` stamped copies, so in
    both modes ``ratio`` is the poisoned fraction of the returned set.

    Returns
    -------
    (x, y, poisoned)
        The training set and a boolean vector marking its poisoned rows.
    """
    n = int(x.shape[0])
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"poison ratio must lie in [0, 1], got {ratio}")
    if mode == "replace":
        k = round(ratio * n)
        idx = torch.randperm(n, generator=generator)[:k]
        xo, yo = x.clone(), y.clone()
        xo[idx] = trigger.apply(x[idx])
        yo[idx] = target_label
        flag = torch.zeros(n, dtype=torch.bool)
        flag[idx] = True
        return xo, yo, flag
    if mode == "add":
        if ratio >= 1.0:
            raise ValueError("mode='add' needs a poison ratio below 1 (the clean data stays)")
        k = round(ratio * n / (1.0 - ratio))
        if n == 0 and k > 0:
            raise ValueError("mode='add' needs at least one clean example to stamp")
        src = torch.randint(0, max(n, 1), (k,), generator=generator)
        xa = trigger.apply(x[src])
        ya = torch.full((k,), target_label, dtype=y.dtype)
        flag = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(k, dtype=torch.bool)])
        return torch.cat([x, xa]), torch.cat([y, ya]), flag
    raise ValueError(f"mode must be 'replace' or 'add', got {mode!r}")


class TriggerAttack(ClientAttack):
    """Shared behaviour of pixel-trigger data poisoning (all-to-one, Gu et al. 2017).

    Subclasses say which trigger an attacker trains with (:meth:`train_trigger`) and which one the
    evaluator tests with (:meth:`test_trigger`); this class does the poisoning and the test set.

    Parameters
    ----------
    target_label
        Class every triggered input should be classified as.
    poison_ratio
        Poisoned fraction of the attacker's training set in each round it acts.
    mode
        ``"replace"`` stamps part of the clean data, ``"add"`` appends stamped copies.
    """

    target_label: int  # a targeted attack: never the base class's None

    def __init__(self, *, target_label: int, poison_ratio: float, mode: PoisonMode) -> None:
        if target_label < 0:
            raise ValueError(f"target_label must be ≥ 0, got {target_label}")
        if not 0.0 <= poison_ratio <= 1.0 or (mode == "add" and poison_ratio >= 1.0):
            raise ValueError(f"poison_ratio {poison_ratio} is not allowed with mode={mode!r}")
        self.target_label = target_label
        self.poison_ratio = poison_ratio
        self.mode = mode

    @abstractmethod
    def train_trigger(self, ctx: ClientContext, height: int, width: int) -> PixelTrigger:
        """The trigger this attacker stamps on its training data in this round."""

    @abstractmethod
    def test_trigger(self, height: int, width: int) -> PixelTrigger:
        """The trigger the evaluator stamps on test images."""

    def poison(
        self, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        trigger = self.train_trigger(ctx, int(x.shape[-2]), int(x.shape[-1]))
        xo, yo, _ = poison_with_trigger(
            x,
            y,
            trigger=trigger,
            target_label=self.target_label,
            ratio=self.poison_ratio,
            mode=self.mode,
            generator=ctx.generator("backdoor/poison"),
        )
        return xo, yo

    def backdoor_testset(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        keep = y != self.target_label
        xb = self.test_trigger(int(x.shape[-2]), int(x.shape[-1])).apply(x[keep])
        return xb, torch.full((int(keep.sum()),), self.target_label, dtype=y.dtype)
