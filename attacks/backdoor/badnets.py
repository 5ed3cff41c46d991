"""BadNets: a fixed pixel pattern stamped on part of the attacker's data, relabelled to one class.

Gu, Dolan-Gavitt & Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply
Chain", arXiv:1708.06733, 2017. The federated use (one malicious client poisoning a share of its
batches) follows Bagdasaryan et al. (AISTATS 2020) and the benchmarks in the reference notes.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from attacks.backdoor.triggers import (
    Corner,
    PatternShape,
    PixelTrigger,
    PoisonMode,
    TriggerAttack,
    pattern_trigger,
)
from attacks.base import CLIENT_ATTACKS
from simulator.context import ClientContext

__all__ = ["BadNets"]


@CLIENT_ATTACKS.register("badnets")
class BadNets(TriggerAttack):
    """BadNets pixel-pattern backdoor (Gu et al. 2017): a corner patch relabels inputs to one class.

    Parameters
    ----------
    target_label
        The class a triggered input should be classified as (2, as in the DBA and BackFed configs).
    poison_ratio
        Poisoned share of the attacker's training set each round it acts; 0.3125 = 20 of every 64,
        the per-batch rate of the DBA (MNIST) and BackFed configs. Here it is a share of the whole
        set, so each mini-batch holds that share on average rather than exactly.
    mode
        ``"replace"``: stamp that share of the clean examples; ``"add"``: append stamped copies.
    shape, size, corner, margin, value
        The pattern (``square``, ``plus``, ``L`` or ``checker`` in a size × size box), the corner it
        sits in, its distance from both edges in pixels, and the value written on every channel.

    Notes
    -----
    The default 4 × 4 white square 1 px from the bottom-right corner stays in MNIST's empty border;
    FLPoison uses a 5 × 5 square flush with the corner, backdoors101 a 5 × 3 pattern.
    """

    def __init__(
        self,
        target_label: Annotated[int, Field(ge=0)] = 2,
        poison_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3125,
        mode: PoisonMode = "replace",
        shape: PatternShape = "square",
        size: Annotated[int, Field(ge=1)] = 4,
        corner: Corner = "bottom_right",
        margin: Annotated[int, Field(ge=0)] = 1,
        value: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0,
    ) -> None:
        super().__init__(target_label=target_label, poison_ratio=poison_ratio, mode=mode)
        self.shape, self.size, self.corner, self.margin, self.value = shape, size, corner, margin, value

    def trigger(self, height: int, width: int) -> PixelTrigger:
        """The pattern placed on a height × width image."""
        return pattern_trigger(
            shape=self.shape,
            size=self.size,
            corner=self.corner,
            margin=self.margin,
            value=self.value,
            height=height,
            width=width,
        )

    def train_trigger(self, ctx: ClientContext, height: int, width: int) -> PixelTrigger:
        return self.trigger(height, width)

    def test_trigger(self, height: int, width: int) -> PixelTrigger:
        return self.trigger(height, width)
