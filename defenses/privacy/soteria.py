"""Soteria (Sun, Li, Wang, Alfarra, Li & Chen, "Soteria: Provable Defense against Privacy Leakage in
Federated Learning from Representation Perspective", CVPR 2021).

The defended layer is a fully connected layer whose input is the data representation r = f(x). The client
perturbs r by pruning the representation entries that leak the most: for each entry i it computes

    ρ_i = ‖r_i‖ / ‖∂r_i/∂x‖        (over the client's batch)

— a small ρ_i means a small change of the input moves r_i a lot, so r_i pins down x — and removes the
``fraction`` of entries with the smallest ρ_i, which for the gradient of the defended layer
(``∂L/∂W = δ·rᵀ``) means zeroing the matching *columns* of W's gradient. Only that layer's gradient changes.

Adaptation to FedAvg updates (documented choice): ρ is computed once per round on the model the client
received and its whole local data set, and the mask is applied to the columns of the defended layer's
*update* Δ. The paper's FedSGD setting (one gradient) is the special case of one local step. The official
evaluation code that GIFD ships prunes the 1st percentile; the paper sweeps the pruning rate, so
``fraction`` is a parameter (default 0.4, our choice).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call, jacrev

from defenses.base import CLIENT_DEFENSES, ClientDefense
from simulator.context import ClientContext
from simulator.flat import layout_of

__all__ = ["Soteria", "defended_layer", "representation_ratios"]


def defended_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Linear]:
    """The named ``nn.Linear`` module, or the model's first one (the layer right after the feature
    extractor)."""
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear) and (name is None or n == name):
            return n, m
    known = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    raise ValueError(f"no linear layer {name!r} in the model; linear layers: {known or 'none'}")


def representation_ratios(model: nn.Module, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """ρ_i = ‖r_i‖ / ‖∂r_i/∂x‖ for every input entry i of the defended layer (shape (in_features,)).

    ``‖r_i‖`` is the norm of entry i over the batch; ``∂r_i/∂x`` is the Jacobian of ``Σ_b r_{b,i}`` with
    respect to the whole batch (one vectorised ``jacrev`` instead of the paper code's loop over entries)."""
    _, lin = defended_layer(model, layer)
    captured: list[torch.Tensor] = []

    def grab(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0])

    model = model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    handle = lin.register_forward_pre_hook(grab)
    try:

        def rep(inp: torch.Tensor) -> torch.Tensor:
            captured.clear()
            functional_call(model, {**params, **buffers}, (inp,))
            return captured[-1].reshape(inp.shape[0], -1).sum(0)

        with torch.no_grad():
            rep(x)
            per_sample = captured[-1].reshape(x.shape[0], -1).detach()  # r_{b,i}
        jac = jacrev(rep)(x.detach().float())  # (F, B, C, H, W)
    finally:
        handle.remove()
    num = per_sample.norm(dim=0)
    den = jac.reshape(jac.shape[0], -1).norm(dim=1)
    return num / (den + 1e-12)


@CLIENT_DEFENSES.register("soteria")
class Soteria(ClientDefense):
    """Prune the defended layer's representation entries with the smallest ‖r_i‖/‖∂r_i/∂x‖ (Sun et al. 2021)."""  # noqa: E501  (first line = `privsim list` summary)

    needs_client_data = True

    def __init__(
        self, *, fraction: Annotated[float, Field(gt=0, lt=1)] = 0.4, layer: str | None = None
    ) -> None:
        self.fraction, self.layer = fraction, layer

    def mask(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Boolean (in_features,): True for the representation entries whose gradient columns are removed."""
        rho = representation_ratios(model, x, self.layer)
        k = int(self.fraction * rho.numel())
        out = torch.zeros(rho.numel(), dtype=torch.bool)
        if k > 0:
            out[torch.argsort(rho, stable=True)[:k]] = True
        return out

    def apply(self, delta: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        if ctx.received_model is None or ctx.data is None:
            raise RuntimeError("soteria needs the received model and the client's data in the ClientContext")
        model: nn.Module = ctx.received_model
        name, lin = defended_layer(model, self.layer)
        pruned = self.mask(model, ctx.data[0])
        sl = layout_of(model).slices()[f"{name}.weight"]
        out = delta.clone()
        w = out[sl].view(lin.out_features, lin.in_features)
        w[:, pruned] = 0
        return out
