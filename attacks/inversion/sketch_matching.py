"""Gradient inversion of a sketched update by matching in sketch space (Song, Wang, Yu & Zhang,
"Sketching for First Order Method: Efficient Algorithm for Low-Bandwidth Channel and Vulnerability",
ICML 2023, Sec. "vulnerability").

A server that de-sketches must know the round's sketch R (the shared seed), so it can sketch the
payload of candidate inputs itself and match ``R·∇θL(x̂, ŷ)`` to the received sketch ``y = R·Δ + noise``:

    minimise  1 − cos(R·sim(x̂), y) + α·TV(x̂)   over x̂ ∈ [0, 1]

with Inverting Gradients' optimiser (signed Adam, step decay, restarts). ``sim`` is the client's
payload recomputed from the ServerView (:class:`~attacks.inversion._common.PayloadSimulator`: a FedSGD
gradient, or K simulated local SGD steps). The naive alternative — IG on the de-sketched ``Rᵀ·y`` — is
plain ``inverting_gradients`` on a scenario with a sketch compressor and is the baseline this attack is
compared with. Labels are read from the de-sketched last layer.

Clipping before and after the sketch only rescales y, which the cosine ignores; Gaussian noise on the
sketch (the compressor's ``noise_multiplier``) is what degrades the match. Entries of the flat layout that
are not trainable parameters (BatchNorm statistics) are simulated as zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from attacks.base import INVERSION_ATTACKS, ServerView
from attacks.inversion._common import PayloadSimulator, gradient_distance, total_variation
from attacks.inversion.inverting_gradients import InvertingGradients
from attacks.labels import LabelStrategy, recover_labels
from simulator.flat import layout_of
from simulator.sketching.base import COMPRESSORS

if TYPE_CHECKING:
    from simulator.sketching.operators import SketchOperator

__all__ = ["SketchInvertingGradients", "round_operator"]


def round_operator(view: ServerView) -> SketchOperator:
    """The sketch operator R of the view's round, rebuilt from the shared seed like the server does."""
    info = view.sketch
    if info is None:
        raise ValueError(
            "this attack matches in sketch space: the ServerView carries no sketch "
            "(use a scenario with a sketch [compression])"
        )
    comp = COMPRESSORS.create(info.operator, info.params)
    dim = info.dim or layout_of(view.model).dim
    # a SketchInfo names only is_sketch compressors, and they have operator() (a capability, not a base class)
    return comp.operator(  # type: ignore[attr-defined]
        seed=info.seed,
        server_round=info.server_round,
        dim=dim,
    )


@INVERSION_ATTACKS.register("sketch_inverting_gradients")
class SketchInvertingGradients(InvertingGradients):
    """IG matching in sketch space with the shared sketch R (Song et al., ICML 2023)."""

    attack_name = "sketch_inverting_gradients"
    wants_sketch = True
    works_on_aggregate = False  # matches one client's sketch; a leakage aggregate refuses compression anyway
    # the operators build sketches with chunked in-place ops, untested under vmap and torch.compile: eager
    # loop
    supports_vmap = False
    supports_compile = False
    runs_on_device = False  # the sketch operators' device handling is untested

    def __init__(self, *, label_strategy: LabelStrategy = "idlg", **ig: Any) -> None:
        super().__init__(label_strategy=label_strategy, **ig)  # IG's parameters (the registry lists them)

    def _desketched(self, view: ServerView) -> ServerView:
        op = round_operator(view)
        return dataclasses.replace(view, payload=op.desketch(view.payload.float()).reshape(-1), sketch=None)

    def _labels(self, view: ServerView, n: int) -> torch.Tensor:
        return recover_labels(self._desketched(view), strategy=self.label_strategy, num_images=n)

    def _objective(self, view: ServerView) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        op = round_operator(view)
        layout = layout_of(view.model)
        sim = PayloadSimulator(dataclasses.replace(view, payload=torch.zeros(layout.dim), sketch=None))
        where = dict(zip(sim.names, range(len(sim.names))))
        target = (view.payload.detach().float().reshape(-1),)
        distance, tv = self.distance, self.tv

        def flat(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return torch.cat(
                [
                    parts[where[n]].reshape(-1) if n in where else torch.zeros(size)
                    for n, size in zip(layout.names, layout.sizes)
                ]
            )

        def f(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            sketched = op.sketch(flat(sim.simulate(x, y))).reshape(-1)
            match = gradient_distance((sketched,), target, distance)
            loss = match + tv * total_variation(x) if tv else match
            return loss, match.detach()

        return f
