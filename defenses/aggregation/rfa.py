"""RFA: robust federated aggregation by the geometric median (Pillutla, Kakade, Harchaoui, IEEE
Trans. Signal Processing 2022, "Robust Aggregation for Federated Learning")."""

from __future__ import annotations

import torch

from defenses.aggregation._linalg import gram, weighted_mean
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext

__all__ = ["RFA", "smoothed_weiszfeld"]


def smoothed_weiszfeld(
    g: torch.Tensor, alphas: torch.Tensor, *, nu: float = 1e-6, max_iter: int = 100, ftol: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed Weiszfeld iterations for the weighted geometric median (Pillutla et al., 2022, Alg. 2).

    Minimises ``Σ_i α_i max(ν, ‖v − u_i‖)`` (the ν-smoothed objective) with the updates
    ``β_i ∝ α_i / max(ν, ‖v − u_i‖)``, ``v ← Σ β_i u_i / Σ β_i``, starting from the α-weighted mean.
    Every iterate is a convex combination ``v = cᵀU``, so the whole iteration runs on the Gram
    matrix ``G = UUᵀ``: ``‖v − u_i‖² = (c − e_i)ᵀ G (c − e_i)``. Stops after ``max_iter`` iterations
    or when the objective improves by less than ``ftol`` (relative).

    Parameters
    ----------
    g : torch.Tensor
        ``(n, n)`` float64 Gram matrix of the updates.
    alphas : torch.Tensor
        ``(n,)`` non-negative weights (example counts).

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        The coefficients ``c`` (``(n,)``, summing to 1) and the final distances ``‖v − u_i‖``.
    """
    a = alphas.to(device=g.device, dtype=torch.float64)
    a = a / a.sum()
    eye = torch.eye(g.shape[0], dtype=torch.float64, device=g.device)

    def distances(c: torch.Tensor) -> torch.Tensor:
        diff = c[None, :] - eye  # row i: c − e_i
        return ((diff @ g) * diff).sum(dim=1).clamp_min(0.0).sqrt()

    c = a.clone()
    dist = distances(c)
    obj = float((a * dist.clamp_min(nu)).sum())
    for _ in range(max_iter):
        beta = a / dist.clamp_min(nu)
        c = beta / beta.sum()
        dist = distances(c)
        new_obj = float((a * dist.clamp_min(nu)).sum())
        done = abs(obj - new_obj) <= ftol * max(new_obj, 1e-300)
        obj = new_obj
        if done:
            break
    return c, dist


@AGGREGATORS.register("rfa")
class RFA(Aggregator):
    """RFA (Pillutla et al., 2022): the example-weighted geometric median of the updates, by the
    smoothed Weiszfeld algorithm.

    Every client is ``accepted`` (each gets a positive weight). Score = the Euclidean distance of
    the update to the geometric median (higher = more suspicious; Weiszfeld's weight is its inverse).

    Parameters
    ----------
    max_iter : int
        Weiszfeld iterations at most (the paper reports a few suffice; the RFA reference code uses 4).
    nu : float
        Smoothing ν: distances below ν count as ν.
    ftol : float
        Relative objective improvement below which the iteration stops.
    """

    selects_clients = False  # every client gets a positive weight: no detection rates

    def __init__(self, max_iter: int = 100, nu: float = 1e-6, ftol: float = 1e-8) -> None:
        if max_iter < 0 or nu <= 0 or ftol < 0:
            raise ValueError("need max_iter >= 0, nu > 0, ftol >= 0")
        self.max_iter, self.nu, self.ftol = max_iter, nu, ftol

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        c, dist = smoothed_weiszfeld(
            gram(updates), weights, nu=self.nu, max_iter=self.max_iter, ftol=self.ftol
        )
        update = weighted_mean(updates, c)
        return AggregationResult(
            update, tuple(ctx.client_ids), {cid: float(s) for cid, s in zip(ctx.client_ids, dist.tolist())}
        )
