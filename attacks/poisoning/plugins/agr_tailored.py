"""``agr_tailored``: the AGR-tailored attack (Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing
Model Poisoning Attacks and Defenses for Federated Learning", NDSS 2021, Sec. IV)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import torch
from pydantic import Field

from attacks.base import POISONING_ATTACKS, PoisoningAttack
from attacks.poisoning.min_max import Perturbation, agr_tailored

__all__ = ["AGRTailored"]


@POISONING_ATTACKS.register("agr_tailored")
class AGRTailored(PoisoningAttack):
    """AGR-tailored (Shejwalkar & Houmansadr, NDSS 2021): every attacker sends ``μ + γ·∇p``, ``γ``
    maximising the deviation ``‖agr([crafted × f; known]) − μ‖`` of the aggregation rule's output from the
    known mean.

    Parameters
    ----------
    knowledge
        ``"omniscient"``: the round's benign updates; ``"partial"``: the attackers' own honest updates (needs
        at least two acting attackers).
    aggregator, aggregator_params
        The rule the attackers simulate, an ``aggregator`` plug-in name and its params; default (unset) the
        scenario's own aggregator in its current state (the round core passes it as ``agr``; the attackers'
        probes never change the server's state).
    perturbation
        ``∇p``: ``"std"`` (``−σ``), ``"unit_vec"`` (``−μ/‖μ‖``) or ``"sign"`` (``−sign(μ)``).
    gamma_init, tol
        ``γ_init`` and ``τ`` of the paper's halving search (10 and 10⁻⁵).

    Notes
    -----
    This is the paper's deviation objective (its attack on trimmed mean and median), used for every rule; the
    selection-oracle variant for Krum-type rules (:func:`attacks.poisoning.agr_tailored_oracle`) needs to know
    which rows a rule selects, which ``agr`` (an aggregate only) does not tell.
    """

    def __init__(
        self,
        *,
        aggregator: str | None = None,
        aggregator_params: dict[str, Any] | None = None,
        perturbation: Perturbation = "std",
        gamma_init: Annotated[float, Field(gt=0.0)] = 10.0,
        tol: Annotated[float, Field(gt=0.0)] = 1e-5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if aggregator is None and aggregator_params:
            raise ValueError("aggregator_params without aggregator: name the aggregator they are for")
        self.aggregator, self.aggregator_params = aggregator, dict(aggregator_params or {})
        self.perturbation, self.gamma_init, self.tol = perturbation, gamma_init, tol

    @property
    def min_known(self) -> int:
        return 2

    @property
    def target_aggregator(self) -> tuple[str, dict[str, Any]] | None:
        return None if self.aggregator is None else (self.aggregator, dict(self.aggregator_params))

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
        return agr_tailored(
            self.known(benign, own),
            num_malicious=num_malicious,
            agr=agr,
            perturbation=self.perturbation,
            gamma_init=self.gamma_init,
            tol=self.tol,
        )
