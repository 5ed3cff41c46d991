"""``sign_flip``: send the negated update (Li, Xu, Chen, Giannakis, Ling, "RSA: Byzantine-Robust Stochastic
Aggregation Methods for Distributed Learning from Heterogeneous Datasets", AAAI 2019; a baseline of Blades and
FLPoison)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import torch
from pydantic import Field

from attacks.base import POISONING_ATTACKS, PoisoningAttack
from attacks.poisoning.simple import sign_flip

__all__ = ["SignFlip"]


@POISONING_ATTACKS.register("sign_flip")
class SignFlip(PoisoningAttack):
    """Sign flipping (Li et al., AAAI 2019): every attacker sends ``−s·mean(known)``, or its own ``−s·Δ_i``.

    Parameters
    ----------
    knowledge
        ``"omniscient"``: the mean of the round's benign updates; ``"partial"``: of the attackers' own.
    scale
        ``s`` in ``−s·g`` (1 = plain flip; larger values also inflate the norm).
    per_attacker
        ``True``: attacker ``i`` sends ``−s·Δ_i``, its own honest update (the classic sign-flipping
        client of Blades and FLPoison); needs ``knowledge = "partial"``.
    """

    def __init__(
        self, *, scale: Annotated[float, Field(gt=0.0)] = 1.0, per_attacker: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if per_attacker and self.knowledge != "partial":
            raise ValueError(
                'per_attacker = true flips each attacker\'s own update: it needs knowledge = "partial"'
            )
        self.scale, self.per_attacker = scale, per_attacker

    def craft(
        self,
        benign: torch.Tensor,
        own: torch.Tensor,
        *,
        num_malicious: int,
        generator: torch.Generator,
        agr: Callable[[torch.Tensor], torch.Tensor],
        global_vector: torch.Tensor,
    ) -> torch.Tensor:
        return sign_flip(
            self.known(benign, own),
            num_malicious=num_malicious,
            scale=self.scale,
            per_attacker=self.per_attacker,
        )
