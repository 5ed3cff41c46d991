"""Model replacement and constrain-and-scale: train the backdoor, then boost the update by γ.

Bagdasaryan, Veit, Hua, Estrin & Shmatikov, "How To Backdoor Federated Learning", AISTATS 2020.
With FedAvg over n clients and server learning rate η, G_{t+1} = G_t + (η/n)·Σ Δ_i; an attacker that
submits γ·Δ with γ = n/η replaces the global model by its own when the benign updates roughly cancel
(Section 3.2). Constrain-and-scale (Section 4) adds an anomaly term to the training loss so the
boosted model stays close to the global one.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field, create_model
from torch import nn

from attacks.backdoor import badnets as _badnets  # noqa: F401  (registers the default base)
from attacks.backdoor.compose import (
    BaseSpec,
    ComposedAttack,
    chain_hooks,
    named_global_params,
    scale_factor_of,
)
from attacks.base import CLIENT_ATTACKS
from simulator.context import ClientContext
from simulator.training import TrainHooks

__all__ = ["AnomalyLoss", "ModelReplacement"]

#: the default base (a frozen spec, so one shared instance is a safe default)
_BADNETS = BaseSpec(name="badnets")


class AnomalyLoss(TrainHooks):
    """Adds ``alpha · ‖w − w_global‖₂`` (trainable parameters only) to the training loss."""

    def __init__(self, alpha: float, ctx: ClientContext) -> None:
        self.alpha, self.ctx = alpha, ctx
        self._pairs: list[tuple[nn.Parameter, torch.Tensor]] | None = None

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        if self._pairs is None:
            self._pairs = named_global_params(model, self.ctx.global_vector, self.ctx.layout)
        diff = torch.cat([(p - g).reshape(-1) for p, g in self._pairs])
        return self.alpha * torch.linalg.vector_norm(diff)


@CLIENT_ATTACKS.register("model_replacement")
class ModelReplacement(ComposedAttack):
    """Model replacement (Bagdasaryan et al., AISTATS 2020): a base backdoor boosted by γ = n/η.

    Parameters
    ----------
    base
        The data-level backdoor to train (default ``"badnets"``; a name or ``{name, params}``).
    gamma
        Scale factor γ; None: n/η with n = the expected clients per round and η = ``server_lr``.
    server_lr
        The server learning rate η the attacker assumes (set it to ``federation.server_lr``).
    alpha
        Weight of the anomaly term ``‖w − w_global‖₂`` added to the cross-entropy; 0 is plain model
        replacement, > 0 is constrain-and-scale.

    Notes
    -----
    The paper weighs the two terms as α·L_class + (1 − α)·L_ano with a detector-specific L_ano; here
    the anomaly term is the L2 distance to the global model added with weight ``alpha`` to the
    unweighted cross-entropy (paper α = 0.5, as in FLPoison, corresponds to ``alpha = 1`` with the
    learning rate halved). γ = n/η assumes FedAvg weighs clients equally; with example-weighted
    FedAvg the exact replacement factor is (total examples)/(attacker examples) (the OOD_FL code's
    choice): set ``gamma`` for it.
    """

    def __init__(
        self,
        base: BaseSpec = _BADNETS,
        gamma: Annotated[float, Field(gt=0.0)] | None = None,
        server_lr: Annotated[float, Field(gt=0.0)] = 1.0,
        alpha: Annotated[float, Field(ge=0.0)] = 0.0,
    ) -> None:
        super().__init__(base)
        self.gamma, self.server_lr, self.alpha = gamma, server_lr, alpha

    def own_scale(self, ctx: ClientContext) -> float:
        """γ of this attack alone: the override, or n/η."""
        return self.gamma if self.gamma is not None else ctx.expected_clients_per_round / self.server_lr

    def scale_factor(self, ctx: ClientContext) -> float:
        return self.own_scale(ctx) * scale_factor_of(self.base, ctx)

    def hooks(self, ctx: ClientContext) -> TrainHooks | None:
        own = AnomalyLoss(self.alpha, ctx) if self.alpha > 0 else None
        return chain_hooks(self.base.hooks(ctx), own)

    def transform(self, delta: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        return self.own_scale(ctx) * self.base.transform(delta, ctx)


#: constrain-and-scale is model replacement with the anomaly term on by default (paper α = 0.5).
_ConstrainAndScaleParams = create_model(
    "constrain_and_scale_params",
    __base__=CLIENT_ATTACKS.get("model_replacement").params,
    alpha=(Annotated[float, Field(gt=0.0)], 1.0),
)
CLIENT_ATTACKS.register(
    "constrain_and_scale",
    params=_ConstrainAndScaleParams,
    doc="Constrain-and-scale (Bagdasaryan et al., AISTATS 2020): model replacement whose training loss adds "
    "alpha·‖w − w_global‖₂ (default alpha = 1, the paper's equal weighting) before scaling by γ. The term's "
    "gradient has constant size alpha, so near convergence, where cross-entropy gradients are small, "
    "alpha = 1 stops the backdoor from being learnt (mnist5k CNN, γ = 5: final BA 0.63); alpha = 0.1 "
    "implants it (0.98).",
)(ModelReplacement)
