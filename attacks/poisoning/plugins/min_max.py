"""``min_max``: the Min-Max attack (Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model
Poisoning Attacks and Defenses for Federated Learning", NDSS 2021, Sec. IV)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import torch
from pydantic import Field

from attacks.base import POISONING_ATTACKS, PoisoningAttack
from attacks.poisoning.min_max import Perturbation, min_max_updates

__all__ = ["MinMax"]


@POISONING_ATTACKS.register("min_max")
class MinMax(PoisoningAttack):
    """Min-Max (Shejwalkar & Houmansadr, NDSS 2021): every attacker sends ``μ + γ·∇p``, ``γ`` the largest
    value whose distance to every known update stays within the largest distance between two known updates.

    Parameters
    ----------
    knowledge
        ``"omniscient"``: the round's benign updates; ``"partial"``: the attackers' own honest updates (the
        paper's "unknown benign gradients"; needs at least two acting attackers).
    perturbation
        ``∇p``: ``"std"`` (``−σ``, the official notebooks' choice), ``"unit_vec"`` (``−μ/‖μ‖``) or ``"sign"``.
    gamma_init, tol
        ``γ_init`` and ``τ`` of the paper's halving search (10 and 10⁻⁵).
    """

    def __init__(
        self,
        *,
        perturbation: Perturbation = "std",
        gamma_init: Annotated[float, Field(gt=0.0)] = 10.0,
        tol: Annotated[float, Field(gt=0.0)] = 1e-5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.perturbation, self.gamma_init, self.tol = perturbation, gamma_init, tol

    #: the paper's search for this attack's γ (Min-Sum subclasses this with its own condition)
    _updates = staticmethod(min_max_updates)

    @property
    def min_known(self) -> int:
        return 2

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
        return self._updates(
            self.known(benign, own),
            num_malicious=num_malicious,
            perturbation=self.perturbation,
            gamma_init=self.gamma_init,
            tol=self.tol,
        )
