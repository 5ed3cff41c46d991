"""Inverting Gradients (Geiping, Bauermeister, Dröge & Moeller, "Inverting Gradients — How easy is it
to break privacy in federated learning?", NeurIPS 2020).

Minimise ``1 − cos(∇θ L(x̂, ŷ), g) + α TV(x̂)`` over images x̂ in the box [0, 1] with Adam on the
*sign* of the gradient, the step size divided by 10 at 3/8, 5/8 and 7/8 of the iterations, and keep
the restart with the lowest final matching loss. Labels come from a label-recovery strategy on the
last layer (:mod:`attacks.labels`). For FedAvg updates (``ProtocolInfo(kind="update")``) the server
simulates the client's K local SGD steps with the public lr and batch size and matches the simulated
Δ to the received one (the paper's Sec. 5).

Speed: restarts run as one batched tensor (``torch.func.vmap``) and the step — payload simulation,
double backward, sign — is captured by ``torch.compile`` (``mode="reduce-overhead"``: a CUDA graph)
when the model is on a GPU; ``batched_restarts`` and ``compile_step`` override the choice.

Defaults follow breaching's ``invertinggradients`` config (step size 0.1, signed Adam, box,
step-lr decay, TV scale 0.2 on a mean TV, cosine objective, one restart, 24 000 iterations);
scenarios and tests use far fewer iterations on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch.func import grad, vmap

from attacks.base import INVERSION_ATTACKS, InversionAttack, Reconstruction, ServerView
from attacks.inversion._common import PayloadSimulator, compile_step_fn
from attacks.labels import LabelStrategy, num_images_of, recover_labels
from attacks.progress import steps

__all__ = ["InvertingGradients", "initial_images"]


def initial_images(shape: tuple[int, ...], init: str, generator: torch.Generator) -> torch.Tensor:
    """Starting images in [0, 1]: ``"randn"`` = 0.5 + 0.25·N(0, 1) clipped (a unit normal in the
    normalised space of a [0, 1] image), ``"rand"`` = uniform, ``"zeros"`` = mid-grey."""
    if init == "randn":
        return (0.5 + 0.25 * torch.randn(shape, generator=generator)).clamp(0, 1)
    if init == "rand":
        return torch.rand(shape, generator=generator)
    if init == "zeros":
        return torch.full(shape, 0.5)
    raise ValueError(f"unknown init {init!r}; known: randn, rand, zeros")


@INVERSION_ATTACKS.register("inverting_gradients")
class InvertingGradients(InversionAttack):
    """Inverting Gradients (Geiping et al., NeurIPS 2020): cosine gradient matching + TV, signed Adam."""

    attack_name = "inverting_gradients"
    #: the objective can run under ``torch.func.vmap`` (restarts as one batched tensor)
    supports_vmap = True
    #: the step can be captured by ``torch.compile``
    supports_compile = True
    runs_on_device = True
    #: a batch gradient is already an average over examples (Geiping et al.); on the example-weighted mean of
    #: K clients' FedSGD gradients the objective is exact, and on K clients' FedAvg updates the payload
    #: simulator runs each client's share of the candidate batch from the same global model and averages
    works_on_aggregate = True

    def __init__(
        self,
        *,
        iterations: Annotated[int, Field(ge=1)] = 24_000,
        lr: Annotated[float, Field(gt=0)] = 0.1,
        tv: Annotated[float, Field(ge=0)] = 0.2,
        restarts: Annotated[int, Field(ge=1)] = 1,
        distance: Literal["cosine", "euclidean"] = "cosine",
        signed: bool = True,
        boxed: bool = True,
        decay: bool = True,
        init: Literal["randn", "rand", "zeros"] = "randn",
        label_strategy: LabelStrategy = "llg",
        num_images: Annotated[int, Field(ge=1)] | None = None,
        batched_restarts: Literal["auto", "vmap", "loop"] = "auto",
        compile_step: Literal["auto", "on", "off"] = "auto",
        compile_backend: Literal["inductor", "cudagraphs", "aot_eager"] = "inductor",
        seed: int = 0,
    ) -> None:
        self.iterations, self.lr, self.tv, self.restarts = iterations, lr, tv, restarts
        self.distance, self.signed, self.boxed, self.decay, self.init = distance, signed, boxed, decay, init
        self.label_strategy, self.num_images = label_strategy, num_images
        self.batched_restarts, self.seed = batched_restarts, seed
        self.compile_step, self.compile_backend = compile_step, compile_backend

    def _labels(self, view: ServerView, n: int) -> torch.Tensor:
        return recover_labels(view, strategy=self.label_strategy, num_images=n)

    def _objective(self, view: ServerView) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        """``f(x, y) -> (loss, matching loss)``, differentiable in x; subclasses change what is matched."""
        return PayloadSimulator(view).objective(distance=self.distance, tv=self.tv)

    def reconstruct(self, view: ServerView) -> Reconstruction:
        t0 = time.perf_counter()
        n = num_images_of(view, self.num_images)
        labels = self._labels(view, n)
        objective = self._objective(view)
        step = grad(objective, has_aux=True)  # d loss / d x, with the matching loss as aux
        g = torch.Generator().manual_seed(self.seed)
        device = next(view.model.parameters()).device
        labels = labels.to(device)
        x = (
            initial_images((self.restarts, n, *view.input_shape), self.init, g)
            .to(device)
            .requires_grad_(True)
        )
        opt = torch.optim.Adam([x], lr=self.lr)
        marks = [int(self.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)] if self.decay else []
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=marks, gamma=0.1)
        # restarts as one batched tensor (torch.func.vmap): a win where launches dominate (CUDA); on CPU
        # vmap's double-backward batching rules are slower than a plain loop, so "auto" loops there.
        cuda = device.type == "cuda"
        want = self.batched_restarts == "vmap" or (self.batched_restarts == "auto" and cuda)
        use_vmap = want and self.supports_vmap and self.restarts > 1
        batched = vmap(step, in_dims=(0, None)) if use_vmap else None

        def direction(xd: torch.Tensor, /) -> torch.Tensor:  # positional-only, as compile_step_fn's result
            """The update direction of every restart: the (signed) gradient of its loss."""
            if batched is not None:
                gx, _ = batched(xd, labels)
            else:
                gx = torch.stack([step(xd[r], labels)[0] for r in range(self.restarts)])
            return gx.sign() if self.signed else gx

        # torch.compile pays a one-off compile (tens of seconds) for a faster step; "auto" does so on a GPU,
        # where the captured CUDA graph removes the launch overhead that dominates a small batch.
        compiled = self.supports_compile and (
            self.compile_step == "on" or (self.compile_step == "auto" and cuda)
        )
        t_compile = time.perf_counter()
        if compiled:
            direction, compiled = compile_step_fn(
                direction,
                x.detach(),
                device=device,
                backend=self.compile_backend,
                required=self.compile_step == "on",
            )
        t_loop = time.perf_counter()
        for _ in steps(
            self.iterations, f"{self.attack_name} ({self.restarts} restart{'s' if self.restarts > 1 else ''})"
        ):
            if compiled and cuda:
                torch.compiler.cudagraph_mark_step_begin()
            x.grad = direction(x.detach()).clone()  # a graph's output buffer is reused by its next replay
            opt.step()
            sched.step()
            if self.boxed:
                with torch.no_grad():
                    x.clamp_(0, 1)
        if cuda:
            torch.cuda.synchronize(device)
        loop_s = time.perf_counter() - t_loop
        with torch.no_grad():
            final = [float(objective(x[r].detach(), labels)[1]) for r in range(self.restarts)]
        best = min(range(self.restarts), key=lambda r: final[r] if math.isfinite(final[r]) else math.inf)
        return Reconstruction(
            images=x[best].detach().clamp(0, 1),
            labels=labels,
            losses=tuple(final),
            info={
                "attack": self.attack_name,
                "best_restart": best,
                "iterations": self.iterations,
                "label_strategy": self.label_strategy,
                "batched_restarts": use_vmap,
                "compiled": compiled,
                "compile_seconds": t_loop - t_compile,
                "iterations_per_second": self.iterations / loop_s,
                "seconds": time.perf_counter() - t0,
            },
        )
