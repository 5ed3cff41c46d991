"""PGD: keep the attacker's model inside an L2 ball around the global model while it trains.

Sun, Kairouz, Suresh & McMahan, "Can You Really Backdoor Federated Learning?", arXiv:1911.07963,
2019 (norm-bounded attackers); Wang, Sreenivasan, Rajput, Vishwakarma, Agarwal, Sohn, Lee &
Papailiopoulos, "Attack of the Tails: Yes, You Really Can Backdoor Federated Learning", NeurIPS
2020 (projected gradient descent on the edge-case task). As in the official code
(ksreenivasan/OOD_Federated_Learning), the model is projected every ``project_every`` steps and
once more at the end (here: on the update, which is the same projection).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from attacks.backdoor import edge_case as _edge_case  # noqa: F401  (registers the default base)
from attacks.backdoor.compose import BaseSpec, ComposedAttack, chain_hooks, project_l2, scale_factor_of
from attacks.base import CLIENT_ATTACKS
from simulator.context import ClientContext
from simulator.flat import load_vector, model_vector
from simulator.training import TrainHooks

__all__ = ["PGD", "L2Projection"]

#: the default base (a frozen spec, so one shared instance is a safe default)
_EDGE_CASE = BaseSpec(name="edge_case")


class L2Projection(TrainHooks):
    """After every ``every``-th optimizer step (steps 0, k, 2k, …), pull the weights back into the
    ball ‖w − w_global‖₂ ≤ ``eps``; weights already inside are left untouched."""

    def __init__(self, *, eps: float, every: int, ctx: ClientContext) -> None:
        self.eps, self.every, self.ctx = eps, every, ctx

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        if step % self.every:
            return
        g = self.ctx.global_vector
        d = model_vector(model, self.ctx.layout) - g
        if float(torch.linalg.vector_norm(d)) > self.eps:
            load_vector(model, g + project_l2(d, self.eps), self.ctx.layout)


@CLIENT_ATTACKS.register("pgd")
class PGD(ComposedAttack):
    """PGD backdoor (Sun et al. 2019; Wang et al., NeurIPS 2020): a base backdoor trained inside an
    L2 ball of radius ``eps`` around the global model.

    Parameters
    ----------
    base
        The data-level backdoor (default ``"edge_case"``: the paper's edge-case PGD). With a base that
        scales (``model_replacement``) the ball bounds the update before scaling.
    eps
        Radius of the ball (OOD_FL CIFAR-10: 2; FLPoison quotes 0.25 for MNIST).
    project_every
        Project every this many local steps (OOD_FL: 10) and at the end.
    adaptive_clip_bound
        The adaptive variant: the norm bound M of a clipping defense the attacker knows. When set,
        ``eps`` is ignored and the radius is M divided by the base's scale factor, so the update the
        server receives has norm ≤ M and passes the clip unchanged.

    Notes
    -----
    The official code also shrinks eps by γ^(round−1) against Krum/Multi-Krum/Multi-metrics; that
    schedule is not reproduced here.
    """

    def __init__(
        self,
        base: BaseSpec = _EDGE_CASE,
        eps: Annotated[float, Field(gt=0.0)] = 2.0,
        project_every: Annotated[int, Field(ge=1)] = 10,
        adaptive_clip_bound: Annotated[float, Field(gt=0.0)] | None = None,
    ) -> None:
        super().__init__(base)
        self.eps, self.project_every, self.adaptive_clip_bound = eps, project_every, adaptive_clip_bound

    def radius(self, ctx: ClientContext) -> float:
        """The projection radius in this round."""
        if self.adaptive_clip_bound is not None:
            return self.adaptive_clip_bound / scale_factor_of(self.base, ctx)
        return self.eps

    def hooks(self, ctx: ClientContext) -> TrainHooks | None:
        own = L2Projection(eps=self.radius(ctx), every=self.project_every, ctx=ctx)
        return chain_hooks(self.base.hooks(ctx), own)

    def transform(self, delta: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        return self.base.transform(project_l2(delta, self.radius(ctx)), ctx)
