"""Client-side model inspection: stage 3 of the three-stage defense pipeline of Guo et al., "Exploring the
Vulnerabilities of Federated Learning: A Deep Dive into Gradient Inversion Attacks" (IEEE TPAMI 2025).

The pipeline: (1) network design (no sigmoid nets; deeper, ReLU architectures leak less to optimisation
attacks), (2) the local training protocol (larger batches, several local steps), (3) the client
validates the model it receives before training on it, which is what stops analytic attacks that
*modify the model* (Robbing the Fed, Fowl et al., ICLR 2022, and its relatives). This defense is
stage 3; the client refuses a model that fails either check and sends nothing.

* **Architecture.** The parameter names and shapes of the received model
  (:func:`simulator.flat.layout_of`) must equal those the federation agreed on (``ctx.layout``); an
  inserted block, a dropped layer or a widened one is named in the reason.
* **Parameters.** An imprint layer computes one linear measurement in every unit, so its weight rows
  are all (near-)parallel; its back-projection has identical columns, hence parallel rows too. Rows of
  an honestly initialised or trained layer are not: random rows in ``ℝ^n`` have cosines of order
  ``1/√n``, and SGD moves each row along different per-unit gradients. A linear layer with at least
  ``min_rows`` rows, more than ``max_parallel_fraction`` of which have an ``|cos| > cosine_threshold``
  partner, is flagged (the absolute value also catches sign-flipped copies).

``apply`` leaves the update unchanged: the defense acts before training, in :meth:`inspect`.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from defenses.base import CLIENT_DEFENSES, ClientDefense
from simulator.context import ClientContext
from simulator.flat import Layout, layout_of

__all__ = ["ModelInspection", "architecture_problems", "parallel_layers", "parallel_row_fraction"]


def _names(names: list[str], limit: int) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … (+{len(names) - limit})" if len(names) > limit else "")


def architecture_problems(received: Layout, agreed: Layout, *, limit: int = 4) -> list[str]:
    """What differs between the received model's layout and the agreed one (empty: identical).

    >>> a = Layout(("fc.weight", "fc.bias"), ((2, 3), (2,)))
    >>> architecture_problems(Layout(("fc.weight", "fc.bias"), ((4, 3), (4,))), a)
    ['2 reshaped: fc.weight (2, 3) → (4, 3), fc.bias (2,) → (4,)']
    >>> architecture_problems(Layout(("pre.weight", "m.fc.weight", "m.fc.bias"), ((3, 3), (2, 3), (2,))), a)
    ["the agreed model is nested under 'm.'", '1 unexpected: pre.weight']
    """
    got, want = dict(zip(received.names, received.shapes)), dict(zip(agreed.names, agreed.shapes))
    extra = [n for n in received.names if n not in want]
    missing = [n for n in agreed.names if n not in got]
    reshaped = [
        f"{n} {want[n]} → {got[n]}" for n in agreed.names if n in got and tuple(got[n]) != tuple(want[n])
    ]
    out = []
    prefix = _wrapping_prefix(received, agreed)
    if prefix is not None:  # the agreed model, whole, inside a wrapper that adds parameters of its own
        out.append(f"the agreed model is nested under {prefix!r}")
        extra = [n for n in extra if not n.startswith(prefix)]
        missing = []
    if extra:
        out.append(f"{len(extra)} unexpected: {_names(extra, limit)}")
    if missing:
        out.append(f"{len(missing)} missing: {_names(missing, limit)}")
    if reshaped:
        out.append(f"{len(reshaped)} reshaped: {_names(reshaped, limit)}")
    if not out and tuple(received.names) != tuple(agreed.names):
        out.append("parameters in a different order")
    return out


def _wrapping_prefix(received: Layout, agreed: Layout) -> str | None:
    """``"p."`` when every agreed parameter appears, same shape, as ``p.<name>`` in the received layout."""
    if not agreed.names or agreed.names[0] in received.names:
        return None
    first = agreed.names[0]
    got = dict(zip(received.names, received.shapes))
    for name in received.names:
        if name.endswith("." + first):
            prefix = name[: -len(first)]
            if all(tuple(got.get(prefix + n, ())) == tuple(s) for n, s in zip(agreed.names, agreed.shapes)):
                return prefix
    return None


@torch.no_grad()
def parallel_row_fraction(weight: torch.Tensor, *, threshold: float, chunk: int = 1024) -> float:
    """Share of the rows of ``weight`` (out × in) that have another row with ``|cos| > threshold``.

    Zero rows have no direction and never count. Computed in blocks of ``chunk`` rows.

    >>> parallel_row_fraction(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]), threshold=0.99)
    0.6666666666666666
    """
    w = weight.detach().flatten(1).double()
    n = w.shape[0]
    if n < 2:
        return 0.0
    norms = w.norm(dim=1)
    live = norms > 0
    u = torch.where(live[:, None], w / norms.clamp_min(1e-300)[:, None], torch.zeros_like(w))
    flagged = torch.zeros(n, dtype=torch.bool)
    for start in range(0, n, chunk):
        c = (u[start : start + chunk] @ u.T).abs()
        rows = torch.arange(start, min(start + chunk, n))
        c[rows - start, rows] = 0.0  # a row is parallel to itself
        flagged[rows] = (c > threshold).any(dim=1)
    return float((flagged & live).sum()) / n


def parallel_layers(
    model: nn.Module, *, threshold: float, max_fraction: float, min_rows: int
) -> list[tuple[str, float]]:
    """Linear layers of ``model`` with more than ``max_fraction`` of (near-)parallel rows, and that share."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and mod.weight.shape[0] >= min_rows:
            frac = parallel_row_fraction(mod.weight, threshold=threshold)
            if frac > max_fraction:
                out.append((name or "<root>", frac))
    return out


@CLIENT_DEFENSES.register("model_inspection")
class ModelInspection(ClientDefense):
    """Refuse a received model whose architecture differs from the agreed one or that carries an imprint
    layer (Guo et al., TPAMI 2025, stage 3).

    Parameters
    ----------
    architecture
        Compare parameter names and shapes with the agreed layout (``ctx.layout``).
    parameters
        Look for linear layers with many (near-)parallel weight rows.
    cosine_threshold
        Two rows are parallel when ``|cos|`` exceeds this.
    max_parallel_fraction
        A layer is flagged when more than this share of its rows has a parallel partner.
    min_rows
        Layers with fewer rows are not checked (a 2-row layer says little).
    """

    def __init__(
        self,
        *,
        architecture: bool = True,
        parameters: bool = True,
        cosine_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.99,
        max_parallel_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1,
        min_rows: Annotated[int, Field(ge=2)] = 4,
    ) -> None:
        self.architecture, self.parameters = architecture, parameters
        self.cosine_threshold, self.max_parallel_fraction, self.min_rows = (
            cosine_threshold,
            max_parallel_fraction,
            min_rows,
        )

    def inspect(self, model: nn.Module, ctx: ClientContext) -> str | None:
        reasons = []
        if self.architecture:
            arch = architecture_problems(layout_of(model), ctx.layout)
            if arch:
                reasons.append("architecture differs from the agreed one: " + "; ".join(arch))
        if self.parameters:
            bad = parallel_layers(
                model,
                threshold=self.cosine_threshold,
                max_fraction=self.max_parallel_fraction,
                min_rows=self.min_rows,
            )
            if bad:
                reasons.append(
                    "imprint-like linear layers (share of rows with a parallel partner, |cos| > "
                    f"{self.cosine_threshold:g}): " + ", ".join(f"{n} {f:.0%}" for n, f in bad)
                )
        return "; ".join(reasons) or None

    def apply(self, delta: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        return delta
