"""``min_sum``: the Min-Sum attack (Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model
Poisoning Attacks and Defenses for Federated Learning", NDSS 2021, Sec. IV)."""

from __future__ import annotations

from attacks.base import POISONING_ATTACKS
from attacks.poisoning.min_max import min_sum_updates
from attacks.poisoning.plugins.min_max import MinMax

__all__ = ["MinSum"]


@POISONING_ATTACKS.register("min_sum")
class MinSum(MinMax):
    """Min-Sum (Shejwalkar & Houmansadr, NDSS 2021): every attacker sends ``μ + γ·∇p``, ``γ`` the largest
    value whose sum of squared distances to the known updates stays within the largest such sum of a known
    update.

    Parameters
    ----------
    knowledge
        ``"omniscient"``: the round's benign updates; ``"partial"``: the attackers' own honest updates (needs
        at least two acting attackers).
    perturbation
        ``∇p``: ``"std"`` (``−σ``), ``"unit_vec"`` (``−μ/‖μ‖``) or ``"sign"`` (``−sign(μ)``).
    gamma_init, tol
        ``γ_init`` and ``τ`` of the paper's halving search (10 and 10⁻⁵).
    """

    _updates = staticmethod(min_sum_updates)
