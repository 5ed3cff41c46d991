"""``gaussian``: i.i.d. Gaussian Byzantine updates (Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine
Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import torch
from pydantic import Field

from attacks.base import POISONING_ATTACKS, PoisoningAttack
from attacks.poisoning.simple import gaussian_noise

__all__ = ["Gaussian"]


@POISONING_ATTACKS.register("gaussian")
class Gaussian(PoisoningAttack):
    """Gaussian noise (Blanchard et al., NeurIPS 2017): every attacker sends a fresh ``N(μ, σ²·I)`` vector.

    The known updates fix only the dimension (``knowledge`` changes nothing here); the noise comes from the
    round's poisoning generator.

    Parameters
    ----------
    mean, std
        ``μ`` and ``σ`` of every coordinate; the default is a standard normal vector.
    """

    def __init__(
        self, *, mean: float = 0.0, std: Annotated[float, Field(ge=0.0)] = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.mean, self.std = mean, std

    def known(self, benign: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        return own  # only d, dtype and device matter: the attackers' own rows always exist

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
        return gaussian_noise(
            own, num_malicious=num_malicious, mean=self.mean, std=self.std, generator=generator
        )
