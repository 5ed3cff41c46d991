"""DBA: colluding attackers each train with one stripe of a global trigger; tests use the whole.

Xie, Huang, Chen & Li, "DBA: Distributed Backdoor Attacks against Federated Learning", ICLR 2020.
Layout and defaults follow the official code (AI-secure/DBA, ``utils/mnist_params.yaml``): four
1 × 4 stripes at rows {0, 3} × columns {0–3, 6–9}, target label 2, 20 of 64 examples poisoned.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from attacks.backdoor.triggers import PixelTrigger, PoisonMode, TriggerAttack, stripe_trigger_parts, union
from attacks.base import CLIENT_ATTACKS
from simulator.context import ClientContext

__all__ = ["DBA"]


@CLIENT_ATTACKS.register("dba")
class DBA(TriggerAttack):
    """Distributed backdoor attack (Xie et al., ICLR 2020): attacker i trains with local trigger i.

    Parameters
    ----------
    target_label, poison_ratio, mode
        As for BadNets (official DBA: label 2, 20 of every 64 examples replaced).
    num_parts
        How many local triggers the global trigger is split into (4 in the paper).
    stripe_length, gap, origin_row, origin_col
        Each local trigger is a 1 × ``stripe_length`` stripe; stripes sit two per row, ``gap``
        pixels apart, starting at (``origin_row``, ``origin_col``). MNIST: 4, 2, (0, 0);
        CIFAR-10 in the official code: 6, 3, (0, 0).
    value
        The value written on the trigger pixels.

    Notes
    -----
    An attacker's part is its rank among ``ctx.colluders`` (the acting colluding attackers of the
    round, sorted) modulo ``num_parts``; an attacker that does not collude (or acts alone) uses
    ``partition_id mod num_parts``, like the official code's fixed attacker-to-pattern map. The
    official single-shot setting also scales the update by 100 (``scale_weights_poison``): compose
    with ``model_replacement`` (``base = "dba"``) for that.
    """

    def __init__(
        self,
        target_label: Annotated[int, Field(ge=0)] = 2,
        poison_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3125,
        mode: PoisonMode = "replace",
        num_parts: Annotated[int, Field(ge=1)] = 4,
        stripe_length: Annotated[int, Field(ge=1)] = 4,
        gap: Annotated[int, Field(ge=0)] = 2,
        origin_row: Annotated[int, Field(ge=0)] = 0,
        origin_col: Annotated[int, Field(ge=0)] = 0,
        value: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0,
    ) -> None:
        super().__init__(target_label=target_label, poison_ratio=poison_ratio, mode=mode)
        self.parts: list[PixelTrigger] = stripe_trigger_parts(
            num_parts=num_parts,
            stripe_length=stripe_length,
            gap=gap,
            origin=(origin_row, origin_col),
            value=value,
        )
        self.full: PixelTrigger = union(self.parts)

    def part_index(self, ctx: ClientContext) -> int:
        """Which local trigger this attacker uses in this round."""
        if len(ctx.colluders) > 1 and ctx.partition_id in ctx.colluders:
            return ctx.colluders.index(ctx.partition_id) % len(self.parts)
        return ctx.partition_id % len(self.parts)

    def train_trigger(self, ctx: ClientContext, height: int, width: int) -> PixelTrigger:
        return self.parts[self.part_index(ctx)]

    def test_trigger(self, height: int, width: int) -> PixelTrigger:
        return self.full
