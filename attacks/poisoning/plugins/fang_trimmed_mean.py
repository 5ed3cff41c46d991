"""``fang_trimmed_mean``: Fang et al.'s attack on trimmed mean and median (Fang, Cao, Jia, Gong, "Local Model
Poisoning Attacks to Byzantine-Robust Federated Learning", USENIX Security 2020, arXiv:1911.11815, Sec. 4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import torch
from pydantic import Field

from attacks.base import POISONING_ATTACKS, PoisoningAttack
from attacks.poisoning.fang import fang_trimmed_mean, fang_trimmed_mean_partial

__all__ = ["FangTrimmedMean"]


@POISONING_ATTACKS.register("fang_trimmed_mean")
class FangTrimmedMean(PoisoningAttack):
    """Fang et al.'s attack on trimmed mean and median (USENIX Security 2020): every coordinate of every
    malicious update lies beyond the benign extreme opposite to the estimated change direction.

    Parameters
    ----------
    knowledge
        ``"omniscient"`` (full knowledge): each value uniform between the benign maximum (minimum) and ``b``
        times it; ``"partial"``: uniform in ``[μ + 3σ, μ + 4σ]`` (or ``[μ − 4σ, μ − 3σ]``) of the attackers'
        own honest updates (needs at least two acting attackers; ``b`` and ``model_space`` are not used).
    b
        The range factor (the paper: 2).
    model_space
        Apply the full-knowledge rule to the models ``w_global + Δ``, as the paper does (the ``b``-scaling
        differs from the update-space form public re-implementations use, the default).
    """

    def __init__(
        self, *, b: Annotated[float, Field(gt=1.0)] = 2.0, model_space: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.b, self.model_space = b, model_space

    @property
    def min_known(self) -> int:
        return 2 if self.knowledge == "partial" else 1

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
        if self.knowledge == "partial":
            return fang_trimmed_mean_partial(own, num_malicious=num_malicious, generator=generator)
        return fang_trimmed_mean(
            benign,
            num_malicious=num_malicious,
            b=self.b,
            generator=generator,
            reference=global_vector if self.model_space else None,
        )
