"""Neurotoxin: train the backdoor only on coordinates that benign clients rarely move.

Zhang, Panda, Song, Yang, Mahoney, Gonzalez, Ramchandran & Mahoney, "Neurotoxin: Durable Backdoors
in Federated Learning", ICML 2022. The attacker estimates the benign update direction, finds its
top-k coordinates by magnitude and zeroes the backdoor gradient there, so the backdoor lives in the
remaining (bottom) coordinates and survives later benign rounds longer.

As in the official code (jhcknzzm/Federated-Learning-Backdoor, ``grad_mask_cv``) the estimate is the
gradient of the *global* model on the attacker's clean data (summed over its mini-batches), the
ranking is global over all layers (``aggregate_all_layer = 1``), and the mask keeps the
``int(d · ratio)`` coordinates with the *smallest absolute* gradient (not a signed top-k).
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from attacks.backdoor import badnets as _badnets  # noqa: F401  (registers the default base)
from attacks.backdoor.compose import BaseSpec, ComposedAttack, chain_hooks
from attacks.base import CLIENT_ATTACKS
from simulator.context import ClientContext
from simulator.flat import unflatten
from simulator.training import TrainHooks

__all__ = ["GradientMask", "Neurotoxin", "bottom_k_mask"]

_PREV_GLOBAL = "neurotoxin/previous-global"
#: the default base (a frozen spec, so one shared instance is a safe default)
_BADNETS = BaseSpec(name="badnets")


def bottom_k_mask(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Boolean mask keeping the ``int(n · keep_ratio)`` entries of smallest ``|scores|``.

    >>> bottom_k_mask(torch.tensor([0.5, -3.0, 0.1, 2.0]), 0.5).tolist()
    [True, False, True, False]
    """
    flat = scores.reshape(-1)
    k = int(flat.numel() * keep_ratio)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if k > 0:
        mask[torch.topk(-flat.abs(), k).indices] = True
    return mask.reshape(scores.shape)


class GradientMask(TrainHooks):
    """Multiplies every parameter gradient by a 0/1 mask before each optimizer step.

    The mask is computed once, at the first step, from the model as it then is (the global model:
    ``before_step`` of step 0 runs before any optimizer step): either from the gradient on the
    attacker's clean data, or from a given flat benign-update estimate.
    """

    def __init__(
        self,
        *,
        keep_ratio: float,
        ctx: ClientContext,
        clean: tuple[torch.Tensor, torch.Tensor] | None,
        estimate: torch.Tensor | None = None,
    ) -> None:
        if clean is None and estimate is None:
            raise ValueError("GradientMask needs clean data or a benign-update estimate")
        self.keep_ratio, self.ctx, self.clean, self.estimate = keep_ratio, ctx, clean, estimate
        self.masks: list[tuple[nn.Parameter, torch.Tensor]] | None = None

    def _benign_scores(self, params: list[tuple[str, nn.Parameter]], model: nn.Module) -> list[torch.Tensor]:
        if self.estimate is not None:
            est = unflatten(self.estimate, self.ctx.layout)
            return [est[name] for name, _ in params]
        x, y = self.clean  # type: ignore[misc]
        total = [torch.zeros_like(p) for _, p in params]
        bs = max(1, self.ctx.train.batch_size)
        for s in range(0, int(x.shape[0]), bs):
            loss = F.cross_entropy(model(x[s : s + bs]), y[s : s + bs])
            grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
            for t, g in zip(total, grads):
                if g is not None:
                    t.add_(g)
        return total

    def compute(self, model: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, float 0/1 mask) pairs from the benign estimate, ranked over all layers."""
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        scores = self._benign_scores(params, model)
        flat = bottom_k_mask(torch.cat([s.detach().reshape(-1) for s in scores]), self.keep_ratio)
        out, start = [], 0
        for (_, p), s in zip(params, scores):
            out.append((p, flat[start : start + s.numel()].reshape(p.shape).to(p.dtype)))
            start += s.numel()
        return out

    @torch.no_grad()
    def before_step(self, model: nn.Module, step: int) -> None:
        if self.masks is None:
            with torch.enable_grad():
                self.masks = self.compute(model)
        for p, m in self.masks:
            if p.grad is not None:
                p.grad.mul_(m)


@CLIENT_ATTACKS.register("neurotoxin")
class Neurotoxin(ComposedAttack):
    """Neurotoxin (Zhang et al., ICML 2022): a base backdoor trained only on the bottom coordinates
    of the benign gradient.

    Parameters
    ----------
    base
        The data-level backdoor (default ``"badnets"``).
    mask_ratio
        Fraction of coordinates the attacker may update: those with the smallest |benign gradient|
        (official ``gradmask_ratio``, 0.95–0.99); the top ``1 − mask_ratio`` are frozen.
    direction
        The benign estimate: ``"benign_gradient"`` (official code: gradient of the global model on
        the attacker's clean data) or ``"global_update"`` (the paper's text: the change of the global
        model since the attacker last acted; falls back to the benign gradient the first time).

    Notes
    -----
    The official code also clips all clients to ``s_norm`` as the server's defense; that belongs to
    the defense chain here, not to the attack.
    """

    def __init__(
        self,
        base: BaseSpec = _BADNETS,
        mask_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95,
        direction: Literal["benign_gradient", "global_update"] = "benign_gradient",
    ) -> None:
        super().__init__(base)
        self.mask_ratio, self.direction = mask_ratio, direction
        self._clean: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def poison(
        self, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._clean[(ctx.partition_id, ctx.server_round)] = (x, y)  # the clean data, for the mask in hooks()
        return self.base.poison(x, y, ctx)

    def hooks(self, ctx: ClientContext) -> TrainHooks | None:
        clean = self._clean.pop((ctx.partition_id, ctx.server_round), None)
        estimate = None
        if self.direction == "global_update":
            prev = ctx.state.get(_PREV_GLOBAL)
            if prev is not None and prev.shape == tuple(ctx.global_vector.shape):
                estimate = ctx.global_vector - torch.from_numpy(np.asarray(prev, dtype=np.float32))
            ctx.state[_PREV_GLOBAL] = ctx.global_vector.numpy().copy()
        if clean is None and estimate is None:
            raise RuntimeError(
                "neurotoxin: poison() must run before hooks() in the same round (it keeps the "
                "clean data the benign gradient is estimated on)"
            )
        own = GradientMask(
            keep_ratio=self.mask_ratio,
            ctx=ctx,
            clean=None if estimate is not None else clean,
            estimate=estimate,
        )
        return chain_hooks(self.base.hooks(ctx), own)
