"""``fang_krum``: Fang et al.'s attack on Krum (Fang, Cao, Jia, Gong, "Local Model Poisoning Attacks to
Byzantine-Robust Federated Learning", USENIX Security 2020, arXiv:1911.11815, Sec. 4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import torch
from pydantic import Field

from attacks.base import POISONING_ATTACKS, PoisoningAttack
from attacks.poisoning.fang import fang_krum

__all__ = ["FangKrum"]


@POISONING_ATTACKS.register("fang_krum")
class FangKrum(PoisoningAttack):
    """Fang et al.'s attack on Krum (USENIX Security 2020): every attacker sends ``−λ·s`` (``s`` the sign of
    the known updates' mean), ``λ`` halved from an upper bound until Krum selects a crafted update.

    Parameters
    ----------
    knowledge
        ``"omniscient"`` (the paper's full knowledge): ``s``, the bound on ``λ`` and Krum's choice from the
        round's benign updates; ``"partial"``: from the attackers' own honest updates, ``λ`` starting at
        ``lambda_init`` (default 1, as FLPoison), since the bound needs more known updates than attackers.
    lambda_init
        Starting ``λ``; default the paper's bound (omniscient), or 1 when the bound is undefined
        (``n_b − f − 1 < 1``) and for ``"partial"``.
    threshold
        Stop halving once ``λ`` falls below it (the paper: 10⁻⁵); then ``−λ·s`` is sent with that tiny ``λ``.
    epsilon
        Radius of the ball around the first crafted update the other attackers' copies are drawn from
        (0: exact copies; FLPoison uses 0.01).

    Notes
    -----
    Krum's choice is simulated with the attack's own Krum (:func:`attacks.poisoning.fang.krum_select`, ``f`` =
    the acting attackers), not the server's aggregator.
    """

    def __init__(
        self,
        *,
        lambda_init: Annotated[float, Field(gt=0.0)] | None = None,
        threshold: Annotated[float, Field(gt=0.0)] = 1e-5,
        epsilon: Annotated[float, Field(ge=0.0)] = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.lambda_init, self.threshold, self.epsilon = lambda_init, threshold, epsilon

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
        known = self.known(benign, own)
        lam = self.lambda_init
        if lam is None and (self.knowledge == "partial" or known.shape[0] - num_malicious - 1 < 1):
            lam = 1.0
        return fang_krum(
            known,
            num_malicious=num_malicious,
            lambda_init=lam,
            threshold=self.threshold,
            epsilon=self.epsilon,
            generator=generator,
        )
