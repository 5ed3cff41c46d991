"""Deep Leakage from Gradients (Zhu, Liu & Han, "Deep Leakage from Gradients", NeurIPS 2019).

Dummy images and dummy soft labels (logits passed through a softmax) are optimised jointly with
L-BFGS so that the gradient they produce matches the shared one in squared Euclidean distance. The
recovered label of each image is the argmax of its dummy label.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Annotated, Literal

import torch
from pydantic import Field

from attacks.base import INVERSION_ATTACKS, InversionAttack, Reconstruction, ServerView
from attacks.inversion._common import PayloadSimulator
from attacks.inversion.inverting_gradients import initial_images
from attacks.labels import num_images_of
from attacks.progress import steps

__all__ = ["DeepLeakage", "lbfgs_match"]


def lbfgs_match(
    variables: list[torch.Tensor],
    loss_fn: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    *,
    iterations: int,
    lr: float,
    max_iter: int,
    what: str = "L-BFGS",
) -> float:
    """Run ``iterations`` L-BFGS steps (each up to ``max_iter`` evaluations) on ``variables``; returns
    the final matching loss (inf when the optimisation diverged); ``what`` names its progress bar."""
    opt = torch.optim.LBFGS(
        variables, lr=lr, max_iter=max_iter, history_size=100, line_search_fn="strong_wolfe"
    )
    last = [math.inf]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss, match = loss_fn()
        loss.backward()
        last[0] = float(match)
        return loss

    for _ in steps(iterations, what):
        opt.step(closure)
        if not math.isfinite(last[0]):
            return math.inf
        if last[0] < 1e-12:  # matched to float precision: further steps only add line-search noise
            break
    with torch.no_grad():
        return float(loss_fn()[1])


@INVERSION_ATTACKS.register("dlg")
class DeepLeakage(InversionAttack):
    """DLG (Zhu et al., NeurIPS 2019): joint image + soft-label optimisation, L-BFGS, Euclidean matching."""

    runs_on_device = True

    def __init__(
        self,
        *,
        iterations: Annotated[int, Field(ge=1)] = 300,
        max_iter: Annotated[int, Field(ge=1)] = 20,
        lr: Annotated[float, Field(gt=0)] = 1.0,
        restarts: Annotated[int, Field(ge=1)] = 1,
        init: Literal["randn", "rand", "zeros"] = "rand",
        num_images: Annotated[int, Field(ge=1)] | None = None,
        seed: int = 0,
    ) -> None:
        self.iterations, self.max_iter, self.lr, self.restarts = iterations, max_iter, lr, restarts
        self.init, self.num_images, self.seed = init, num_images, seed

    def reconstruct(self, view: ServerView) -> Reconstruction:
        t0 = time.perf_counter()
        n = num_images_of(view, self.num_images)
        sim = PayloadSimulator(view)
        objective = sim.objective(distance="euclidean")
        g = torch.Generator().manual_seed(self.seed)
        device = next(view.model.parameters()).device
        best: tuple[float, torch.Tensor, torch.Tensor] | None = None
        losses = []
        for r in range(self.restarts):
            x = initial_images((n, *view.input_shape), self.init, g).to(device).requires_grad_(True)
            z = torch.randn((n, view.num_classes), generator=g).to(device).requires_grad_(True)

            def loss_fn(x: torch.Tensor = x, z: torch.Tensor = z) -> tuple[torch.Tensor, torch.Tensor]:
                return objective(x, torch.softmax(z, dim=-1))

            final = lbfgs_match(
                [x, z],
                loss_fn,
                iterations=self.iterations,
                lr=self.lr,
                max_iter=self.max_iter,
                what=f"dlg restart {r + 1}/{self.restarts}",
            )
            losses.append(final)
            if best is None or final < best[0]:
                best = (final, x.detach().clone(), z.detach().argmax(-1))
        assert best is not None
        return Reconstruction(
            images=best[1].clamp(0, 1),
            labels=best[2],
            losses=tuple(losses),
            info={"attack": "dlg", "iterations": self.iterations, "seconds": time.perf_counter() - t0},
        )
