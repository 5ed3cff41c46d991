"""``alie``: "A Little Is Enough" (Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For
Distributed Learning", NeurIPS 2019, arXiv:1902.06156)."""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import torch

from attacks.base import POISONING_ATTACKS, PoisoningAttack
from attacks.poisoning.alie import alie_updates, alie_z_max

__all__ = ["ALIE"]


@POISONING_ATTACKS.register("alie")
class ALIE(PoisoningAttack):
    """ALIE (Baruch et al., NeurIPS 2019): every attacker sends ``μ − z·σ`` (coordinate-wise mean and sample
    standard deviation of the known updates).

    Parameters
    ----------
    knowledge
        ``"omniscient"``: ``μ, σ`` of the round's benign updates; ``"partial"``: of the attackers' own honest
        updates (the paper's setting; needs at least two acting attackers).
    z
        The shift in standard deviations; default ``z_max = Φ⁻¹((n − s)/n)``, ``s = ⌊n/2 + 1⌋ − f``, with
        ``n`` the updates of the round (benign and malicious) and ``f`` the acting attackers among them.

    Notes
    -----
    When the attackers alone are a majority of the round (``s ≤ 0``, ``z_max`` infinite) the default uses
    ``s = 1`` (one supporter): ``z = Φ⁻¹((n − 1)/n)``, a finite shift instead of a refused round.
    """

    def __init__(self, *, z: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.z = z

    @property
    def min_known(self) -> int:
        return 2

    def z_for(self, num_clients: int, num_malicious: int) -> float:
        """``z`` for a round of ``num_clients`` updates, ``num_malicious`` of them crafted."""
        if self.z is not None:
            return self.z
        if math.floor(num_clients / 2 + 1) - num_malicious <= 0:
            return NormalDist().inv_cdf((num_clients - 1) / num_clients) if num_clients > 1 else 0.0
        return alie_z_max(num_clients=num_clients, num_malicious=num_malicious)

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
        n = benign.shape[0] + own.shape[0]
        return alie_updates(
            self.known(benign, own),
            num_malicious=num_malicious,
            num_clients=n,
            z=self.z_for(n, num_malicious),
        )
