"""Label recovery from the last layer of a shared gradient or update (server side, ServerView only).

For a last linear layer ``z = W h + b`` trained with softmax cross-entropy (mean over a batch of
B examples), the gradients are ``∇W = (1/B) Σₙ (pₙ − yₙ) hₙᵀ`` and ``∇b = (1/B) Σₙ (pₙ − yₙ)``.
Row i of ``∇W`` gets a negative contribution only from examples of class i when ``hₙ ≥ 0``
(ReLU or sigmoid features). The strategies here read labels off that structure:

* ``"idlg"`` — Zhao, Mopuri & Bilen, "iDLG: Improved Deep Leakage from Gradients" (2020): for one
  example the true class is the only row whose sum is negative; we take the B most negative row sums.
* ``"yin"`` — Yin et al., "See through Gradients: Image Batch Recovery via GradInversion" (CVPR
  2021): the B rows whose minimum entry is most negative (distinct labels).
* ``"llg"`` — Wainakh et al., "User-Level Label Leakage from Gradients in Federated Learning" (PETS
  2022), bias form: class counts ``cᵢ = B (p̄ᵢ − ∇bᵢ)``, with the mean softmax ``p̄`` estimated by
  running the known model on dummy inputs; rounded to integers summing to B, so repeated labels are
  recovered too.

For a FedAvg update Δ = w_local − w_global after K SGD steps with learning rate η, the server uses
``−Δ / (η K)`` (the mean step gradient) in place of the gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from attacks.base import ServerView
from simulator.flat import layout_of, unflatten

__all__ = [
    "LABEL_STRATEGIES",
    "LabelStrategy",
    "idlg_labels",
    "last_layer_gradient",
    "last_linear",
    "llg_labels",
    "num_images_of",
    "recover_labels",
    "yin_labels",
]

LabelStrategy = Literal["idlg", "yin", "llg"]


@contextmanager
def capture_input(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside the block, every forward call of ``layer`` appends its first positional input to the list."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


def last_linear(model: nn.Module) -> tuple[str, str | None]:
    """State-dict names of the weight and bias of the model's last ``nn.Linear`` layer."""
    found = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            found = (name, mod)
    if found is None:
        raise ValueError("label recovery needs a final nn.Linear layer; the model has none")
    name, mod = found
    prefix = f"{name}." if name else ""
    return prefix + "weight", (prefix + "bias" if mod.bias is not None else None)


def last_layer_gradient(view: ServerView) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The last layer's (weight, bias) gradient as read from the payload.

    A FedAvg update is turned into the mean step gradient ``−Δ / (η K)``; when η or K are not public,
    ``−Δ`` keeps the signs (enough for ``idlg`` and ``yin``, not for counting)."""
    if view.sketch is not None:
        raise ValueError("label recovery reads a plain payload; de-sketch it first")
    parts = unflatten(view.payload.detach().float(), layout_of(view.model))
    wname, bname = last_linear(view.model)
    scale = 1.0
    if view.protocol.kind == "update":
        steps, lr = view.protocol.total_steps, view.protocol.lr
        scale = -1.0 / (lr * steps) if (steps and lr) else -1.0
    w = parts[wname] * scale
    b = parts[bname] * scale if bname is not None else None
    return w, b


def num_images_of(view: ServerView, given: int | None = None) -> int:
    """How many examples the payload covers: ``given``, else the client's reported count or batch size."""
    n = given or view.protocol.num_examples or view.protocol.batch_size
    if not n:
        raise ValueError("the number of images is unknown: set num_images or report num_examples")
    return int(n)


def idlg_labels(view: ServerView, num_images: int) -> torch.Tensor:
    """iDLG (Zhao et al. 2020): the classes with the most negative last-layer weight-gradient row sums
    (exact for one image with non-negative features)."""
    w, _ = last_layer_gradient(view)
    return torch.argsort(w.sum(1))[:num_images].sort().values


def yin_labels(view: ServerView, num_images: int) -> torch.Tensor:
    """GradInversion (Yin et al. 2021): the classes whose weight-gradient rows have the most negative
    minima; assumes the labels of the batch are distinct."""
    w, _ = last_layer_gradient(view)
    return torch.argsort(w.min(1).values)[:num_images].sort().values


def _round_counts(est: torch.Tensor, total: int) -> torch.Tensor:
    """Non-negative integers close to ``est`` summing to ``total`` (largest-remainder rounding)."""
    est = est.clamp(min=0)
    if float(est.sum()) > 0:
        est = est * (total / float(est.sum()))
    counts = est.floor().long()
    rest = total - int(counts.sum())
    if rest > 0:
        counts[torch.argsort(est - counts, descending=True)[:rest]] += 1
    return counts


def llg_labels(view: ServerView, num_images: int, *, dummy_inputs: int = 32, seed: int = 0) -> torch.Tensor:
    """LLG-style counting (Wainakh et al. 2022): ``cᵢ = B (p̄ᵢ − ∇bᵢ)`` with ``p̄`` the model's mean
    softmax on uniform-noise inputs (the attacker knows the model, not the data)."""
    _, b = last_layer_gradient(view)
    if b is None:
        raise ValueError("the 'llg' strategy needs a bias in the last layer; use 'idlg' or 'yin'")
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((dummy_inputs, *view.input_shape), generator=g).to(b.device)
    was_training = view.model.training
    view.model.eval()
    with torch.no_grad():
        pbar = torch.softmax(view.model(x).float(), dim=1).mean(0)
    view.model.train(was_training)
    counts = _round_counts(num_images * (pbar - b), num_images)
    return torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)


LABEL_STRATEGIES: dict[str, Callable[[ServerView, int], torch.Tensor]] = {
    "idlg": idlg_labels,
    "yin": yin_labels,
    "llg": llg_labels,
}


def recover_labels(view: ServerView, *, strategy: str, num_images: int | None = None) -> torch.Tensor:
    """Labels (sorted, int64, one per image) recovered from the ServerView by the named strategy."""
    if strategy not in LABEL_STRATEGIES:
        raise ValueError(f"unknown label strategy {strategy!r}; known: {', '.join(LABEL_STRATEGIES)}")
    return LABEL_STRATEGIES[strategy](view, num_images_of(view, num_images)).long()
