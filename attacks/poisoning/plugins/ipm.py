"""``ipm``: inner-product manipulation (Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD
by Inner Product Manipulation", UAI 2019, arXiv:1903.03936)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import torch
from pydantic import Field

from attacks.base import POISONING_ATTACKS, PoisoningAttack
from attacks.poisoning.ipm import ipm_updates

__all__ = ["IPM"]


@POISONING_ATTACKS.register("ipm")
class IPM(PoisoningAttack):
    """IPM (Xie et al., UAI 2019): every attacker sends ``−ε·μ``, ``μ`` the mean of the known updates.

    Parameters
    ----------
    knowledge
        ``"omniscient"``: ``μ`` of the round's benign updates; ``"partial"``: of the attackers' own.
    epsilon
        ``ε``: the paper's 0.1 against median / Krum-type rules; large values (e.g. 100) against the mean.
    """

    def __init__(self, *, epsilon: Annotated[float, Field(gt=0.0)] = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon

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
        return ipm_updates(self.known(benign, own), num_malicious=num_malicious, epsilon=self.epsilon)
