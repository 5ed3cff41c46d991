"""Shared pieces of the optimisation-based inversion attacks: what the server can simulate.

Given the :class:`ServerView`, :class:`PayloadSimulator` recomputes the payload a client would
have sent for candidate inputs ``x`` and labels ``y``, differentiably in ``x``:

* ``kind="gradient"`` (FedSGD): ``∇θ L(f_θ(x), y)``;
* ``kind="update"`` (FedAvg): K plain SGD steps with the public learning rate η and batch size,
  ``θ_{t+1} = θ_t − η ∇θ L(f_θ(x_t), y_t)``, returning ``Δ = θ_K − θ_0`` (functional SGD through
  ``torch.func.functional_call``, as in Geiping et al. 2020, Sec. 5 "federated averaging").

Everything is written with ``torch.func`` so that one restart is a pure function of its inputs and
several restarts run as one batched tensor under ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from attacks.base import ServerView
from simulator.flat import layout_of, unflatten

__all__ = ["PayloadSimulator", "gradient_distance", "total_variation", "client_loss"]


def client_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for hard labels (int) or soft labels (probabilities, float (B, K))."""
    if y.is_floating_point():
        return -(y * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
    return F.cross_entropy(logits, y)


def gradient_distance(sim: tuple[torch.Tensor, ...], target: tuple[torch.Tensor, ...], kind: str) -> torch.Tensor:
    """Distance between a simulated and the received payload, summed over all layers.

    ``"euclidean"``: ``Σ ‖g − t‖²`` (Zhu et al. 2019); ``"cosine"``: ``1 − ⟨g, t⟩ / (‖g‖ ‖t‖)`` over the
    whole concatenated vector (Geiping et al. 2020)."""
    if kind == "euclidean":
        return sum(((g - t) ** 2).sum() for g, t in zip(sim, target))  # type: ignore[return-value]
    if kind == "cosine":
        dot = sum((g * t).sum() for g, t in zip(sim, target))
        gn = sum((g * g).sum() for g in sim)
        tn = sum((t * t).sum() for t in target)
        return 1.0 - dot / (torch.sqrt(gn) * torch.sqrt(tn) + 1e-12)  # type: ignore[operator]
    raise ValueError(f"unknown gradient distance {kind!r}; known: euclidean, cosine")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean of ``|∂x|`` and ``|∂y|`` over pixels (Rudin et al. 1992)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return 0.5 * (dx + dy)


class PayloadSimulator:
    """Recompute a client's payload from candidate data, using only the ServerView."""

    def __init__(self, view: ServerView) -> None:
        if view.sketch is not None:
            raise ValueError("optimisation attacks here match a plain (de-sketched) payload")
        self.model = view.model
        self.protocol = view.protocol
        self.model.train()  # the client computes its update in training mode
        self.names = tuple(n for n, p in self.model.named_parameters() if p.requires_grad)
        self.params = tuple(p.detach() for n, p in self.model.named_parameters() if p.requires_grad)
        self.buffers = {n: b.detach() for n, b in self.model.named_buffers()}
        parts = unflatten(view.payload.detach().float(), layout_of(self.model))
        self.target = tuple(parts[n].to(p.dtype) for n, p in zip(self.names, self.params))
        self.kind = view.protocol.kind
        if self.kind not in ("gradient", "update"):
            raise ValueError(f"unknown protocol kind {self.kind!r}")
        if self.kind == "update":
            if view.protocol.lr is None or view.protocol.total_steps is None:
                raise ValueError("an update attack needs the public local lr and number of local steps")
            self.lr = float(view.protocol.lr)
            self.steps = int(view.protocol.total_steps)

    def _loss(self, params: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        state = {**dict(zip(self.names, params)), **self.buffers}
        return client_loss(functional_call(self.model, state, (x,)), y)

    def simulate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The payload for inputs ``x`` (B, C, H, W) and labels ``y`` (hard or soft)."""
        g = grad(self._loss)
        if self.kind == "gradient":
            return tuple(g(self.params, x, y))
        n = x.shape[0]
        bs = min(self.protocol.batch_size or n, n)
        p = self.params
        start = 0
        for _ in range(self.steps):  # the server does not know the client's shuffle: batches in order
            if start >= n:
                start = 0
            idx = slice(start, start + bs)
            start += bs
            step = g(p, x[idx], y[idx])
            p = tuple(a - self.lr * s for a, s in zip(p, step))
        return tuple(a - b for a, b in zip(p, self.params))

    def objective(self, *, distance: str, tv: float = 0.0) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        """``f(x, y) -> (loss, matching loss)`` with ``loss = distance + tv · TV(x)``."""

        def f(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            match = gradient_distance(self.simulate(x, y), self.target, distance)
            loss = match + tv * total_variation(x) if tv else match
            return loss, match.detach()

        return f


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
