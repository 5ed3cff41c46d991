"""Centered Clipping (Karimireddy, He, Jaggi, ICML 2021, "Learning from History for Byzantine Robust
Optimization")."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from defenses.aggregation._linalg import column_chunks
from defenses.aggregation.median import distance_scores
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext

__all__ = ["CenteredClipping", "centered_clip"]

Start = Literal["zero", "previous"]


def centered_clip(updates: torch.Tensor, start: torch.Tensor, *, tau: float, iterations: int) -> torch.Tensor:
    """``iterations`` steps of ``v ← v + (1/n) Σ_i (x_i − v)·min(1, τ/‖x_i − v‖)`` from ``v = start``
    (Karimireddy et al., 2021, Eq. (CC)), with uniform weights ``1/n``.

    Each step is one pass over the columns: the distances ``‖x_i − v‖`` are accumulated in float64
    over column chunks, then ``v_new = (1 − c̄)·v + Σ_i (c_i/n)·x_i`` with ``c_i`` the clipping
    factors and ``c̄`` their mean, so no ``n × d`` temporary is formed.

    Parameters
    ----------
    updates : torch.Tensor
        ``(n, d)`` update matrix.
    start : torch.Tensor
        ``(d,)`` start point ``v₀``.
    tau : float
        Clipping radius ``τ > 0`` (``inf``: no clipping, one step gives the plain mean).
    iterations : int
        Number of steps ``L ≥ 0``.

    Returns
    -------
    torch.Tensor
        ``v_L`` as a float64 ``(d,)`` tensor.

    >>> u = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0]])
    >>> centered_clip(u, torch.zeros(2), tau=1.0, iterations=1).tolist()
    [0.3333333333333333, 0.3333333333333333]
    """
    n, d = updates.shape
    v = start.to(device=updates.device, dtype=torch.float64).clone()
    for _ in range(iterations):
        dist = distance_scores(updates, v)
        factors = torch.where(dist > tau, tau / dist.clamp_min(1e-300), torch.ones_like(dist))
        coeffs = factors / n
        shift = 1.0 - float(coeffs.sum())
        new = torch.empty_like(v)
        for sl in column_chunks(d, n):
            new[sl] = coeffs @ updates[:, sl].to(torch.float64) + shift * v[sl]
        v = new
    return v


@AGGREGATORS.register("centered_clipping")
class CenteredClipping(Aggregator):
    """Centered Clipping (Karimireddy, He, Jaggi, ICML 2021): ``L`` steps of
    ``v ← v + (1/n) Σ_i (x_i − v)·min(1, τ/‖x_i − v‖)``.

    Each update's pull on the centre ``v`` is clipped to length ``τ``, so one update moves the
    aggregate by at most ``τ/n`` per step. The average is uniform (``1/n``), as in the paper; the
    example counts are not used. ``start="previous"`` starts each round from the aggregate this
    instance returned in the previous round (the paper's ``v₀ = v_{t−1}``, the server's momentum;
    the aggregator lives for the whole run), and from zero in the first round or whenever the model
    dimension changes; ``start="zero"`` always starts from zero.

    Every client is ``accepted`` (clipping never rejects). Score = the Euclidean distance of the
    update to the returned aggregate (higher = more suspicious).

    Deviations: none from the paper's rule (the authors' code, ``epfml/byzantine-robust-optimizer``,
    runs the same iteration from its stored last aggregate). The paper applies it to the workers'
    momenta; here it aggregates whatever the clients send (model deltas). ``τ`` has no universal
    value: the authors sweep ``τ ∈ {0.1, 10, 1000}`` and ``L ∈ {1, 3, 5}``; the default ``τ = 10``
    is one of those points and should be tuned to the scale of the updates.

    Parameters
    ----------
    tau : float
        Clipping radius ``τ > 0`` (``inf`` disables clipping: the rule becomes the plain mean).
    iterations : int
        Number of clipping steps ``L ≥ 1`` (the paper: ``L = 1`` suffices with a good start point).
    start : str
        ``"previous"`` (the last round's aggregate; zero in the first round) or ``"zero"``.
    """

    selects_clients = False  # clips every client, rejects none: no detection rates

    def __init__(
        self,
        *,
        tau: Annotated[float, Field(gt=0)] = 10.0,
        iterations: Annotated[int, Field(ge=1)] = 1,
        start: Start = "previous",
    ) -> None:
        if not tau > 0 or iterations < 1 or start not in ("zero", "previous"):
            raise ValueError("need tau > 0, iterations >= 1, start in {'zero', 'previous'}")
        self.tau, self.iterations = float(tau), int(iterations)
        self.start: Start = start
        self.previous: torch.Tensor | None = None  # float64 (d,), the last aggregate

    def _start_point(self, updates: torch.Tensor) -> torch.Tensor:
        d = updates.shape[1]
        prev = self.previous
        if self.start == "previous" and prev is not None and prev.shape == (d,):
            return prev.to(updates.device)
        return torch.zeros(d, dtype=torch.float64, device=updates.device)

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        v = centered_clip(updates, self._start_point(updates), tau=self.tau, iterations=self.iterations)
        if self.start == "previous":
            self.previous = v.clone()
        update = v.to(updates.dtype)
        dist = distance_scores(updates, v)
        return AggregationResult(
            update, tuple(ctx.client_ids), {cid: float(s) for cid, s in zip(ctx.client_ids, dist.tolist())}
        )
