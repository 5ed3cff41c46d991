"""``label_flip``: label-flipping data poisoning, a :data:`~attacks.base.CLIENT_ATTACKS` plug-in.

Tolpegin, Truex, Gursoy, Liu, "Data Poisoning Attacks Against Federated Learning Systems", ESORICS 2020;
the untargeted all-classes variant ``y → C − 1 − y`` is the label-flipping baseline of Fang, Cao, Jia, Gong,
"Local Model Poisoning Attacks to Byzantine-Robust Federated Learning", USENIX Security 2020.

It is data poisoning, not update crafting: the acting attackers train honestly on flipped labels inside
their client step. A scenario uses it through the client attack slot, ``[attacks.backdoor] name =
"label_flip"`` (the slot's name is historical; it holds every client attack), not through
``[attacks.poisoning]``.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field

from attacks.base import CLIENT_ATTACKS, ClientAttack
from simulator.context import ClientContext

__all__ = ["LabelFlip", "flip_labels"]


def flip_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``C − 1 − y`` for labels in ``0 … C − 1``.

    >>> flip_labels(torch.tensor([0, 3, 9]), 10).tolist()
    [9, 6, 0]
    """
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {int(y.min())}..{int(y.max())}")
    return (num_classes - 1) - y


@CLIENT_ATTACKS.register("label_flip")
class LabelFlip(ClientAttack):
    """Label flipping (Tolpegin et al., ESORICS 2020; Fang et al., USENIX Security 2020): the attackers train
    on every label ``y`` replaced by ``C − 1 − y``; untargeted (no backdoor test set).

    Parameters
    ----------
    num_classes
        ``C``; default (unset) the dataset's class count, read from the training pool when the data is built.
    """

    target_label = None

    def __init__(self, num_classes: Annotated[int, Field(ge=2)] | None = None) -> None:
        self.num_classes = num_classes

    def reserve(self, train: Any) -> Any:
        """Reserves nothing; learns ``C`` from the training pool (an ``ArrayDataset``) if it was not given."""
        if self.num_classes is None:
            self.num_classes = int(train.num_classes)
        return None

    def poison(
        self, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.num_classes is None:
            raise RuntimeError(
                "label_flip does not know the number of classes: set params.num_classes, "
                "or build the data with this attack's reserve()"
            )
        return x, flip_labels(y, self.num_classes)
