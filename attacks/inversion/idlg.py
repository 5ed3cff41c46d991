"""Improved Deep Leakage from Gradients (Zhao, Mopuri & Bilen, "iDLG: Improved Deep Leakage from
Gradients", arXiv 2001.02610, 2020).

The label is read off the last layer's gradient first (the only negative row sum for one example),
then only the image is optimised with L-BFGS on the squared Euclidean gradient distance.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import torch
from pydantic import Field

from attacks.base import INVERSION_ATTACKS, InversionAttack, Reconstruction, ServerView
from attacks.inversion._common import PayloadSimulator
from attacks.inversion.dlg import lbfgs_match
from attacks.inversion.inverting_gradients import initial_images
from attacks.labels import LabelStrategy, num_images_of, recover_labels

__all__ = ["ImprovedDeepLeakage"]


@INVERSION_ATTACKS.register("idlg")
class ImprovedDeepLeakage(InversionAttack):
    """iDLG (Zhao et al. 2020): label from the last-layer gradient, then the image by L-BFGS."""

    runs_on_device = True

    def __init__(
        self,
        *,
        iterations: Annotated[int, Field(ge=1)] = 300,
        max_iter: Annotated[int, Field(ge=1)] = 20,
        lr: Annotated[float, Field(gt=0)] = 1.0,
        restarts: Annotated[int, Field(ge=1)] = 1,
        init: Literal["randn", "rand", "zeros"] = "rand",
        label_strategy: LabelStrategy = "idlg",
        num_images: Annotated[int, Field(ge=1)] | None = None,
        seed: int = 0,
    ) -> None:
        self.iterations, self.max_iter, self.lr, self.restarts = iterations, max_iter, lr, restarts
        self.init, self.label_strategy, self.num_images, self.seed = init, label_strategy, num_images, seed

    def reconstruct(self, view: ServerView) -> Reconstruction:
        t0 = time.perf_counter()
        n = num_images_of(view, self.num_images)
        labels = recover_labels(view, strategy=self.label_strategy, num_images=n)
        objective = PayloadSimulator(view).objective(distance="euclidean")
        g = torch.Generator().manual_seed(self.seed)
        device = next(view.model.parameters()).device
        best: tuple[float, torch.Tensor] | None = None
        losses = []
        for r in range(self.restarts):
            x = initial_images((n, *view.input_shape), self.init, g).to(device).requires_grad_(True)

            def loss_fn(x: torch.Tensor = x) -> tuple[torch.Tensor, torch.Tensor]:
                return objective(x, labels)

            final = lbfgs_match(
                [x],
                loss_fn,
                iterations=self.iterations,
                lr=self.lr,
                max_iter=self.max_iter,
                what=f"idlg restart {r + 1}/{self.restarts}",
            )
            losses.append(final)
            if best is None or final < best[0]:
                best = (final, x.detach().clone())
        assert best is not None
        return Reconstruction(
            images=best[1].clamp(0, 1),
            labels=labels,
            losses=tuple(losses),
            info={
                "attack": "idlg",
                "iterations": self.iterations,
                "label_strategy": self.label_strategy,
                "seconds": time.perf_counter() - t0,
            },
        )
