"""Canary examples for a one-run record-level privacy audit (Steinke, Nasr, Jagielski, "Privacy Auditing
with One (1) Training Run", NeurIPS 2023, Sec. 6's input-space canaries in the black-box setting).

``n`` canary examples are drawn once from the run's seed: each is an image of uniform noise in the data's
value range with a uniformly random label (an example no real record resembles, so only training on it lowers
its loss). Each canary belongs to one client (uniformly at random) and is *inserted* into that client's local
data with probability ½ (the evaluator's coin). After the run the evaluator scores each canary by the negative
loss of the final global model on it (black-box, final-model threat); in/out scores feed
:mod:`simulator.audit.estimators`.

>>> c = RecordCanaries(num=6, num_clients=3, input_shape=(1, 2, 2), num_classes=4, low=0.0, high=1.0, seed=0)
>>> x, y = c.for_client(0)
>>> tuple(x.shape[1:]), bool((y < 4).all()), (
...     sum(len(c.for_client(p)[1]) for p in range(3)) == int(c.inserted.sum()))
((1, 2, 2), True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simulator.context import derive_seed, make_generator

__all__ = ["RecordCanaries"]


@dataclass
class RecordCanaries:
    num: int
    num_clients: int
    input_shape: tuple[int, ...]
    num_classes: int
    low: float
    high: float
    seed: int
    x: torch.Tensor = field(init=False, repr=False)
    y: torch.Tensor = field(init=False, repr=False)
    owner: np.ndarray = field(init=False)
    inserted: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        g = make_generator(self.seed, "audit", "record-canaries")
        self.x = self.low + (self.high - self.low) * torch.rand((self.num, *self.input_shape), generator=g)
        self.y = torch.randint(0, self.num_classes, (self.num,), generator=g)
        rng = np.random.default_rng(derive_seed(self.seed, "audit", "record-coins"))
        self.owner = rng.integers(0, self.num_clients, self.num)
        self.inserted = rng.random(self.num) < 0.5

    def for_client(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The inserted canaries that client ``pid`` holds (appended to its local data)."""
        idx = torch.as_tensor(np.flatnonzero(self.inserted & (self.owner == pid)), dtype=torch.long)
        return self.x[idx], self.y[idx]

    def scores(self, model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Final-model threat: −loss of each canary under ``model`` (higher: more likely inserted)."""
        model.eval()
        dev = next(model.parameters()).device
        with torch.no_grad():
            loss = (
                F.cross_entropy(model(self.x.to(dev)), self.y.to(dev), reduction="none")
                .double()
                .cpu()
                .numpy()
            )
        s = -loss
        return {"final_model_loss": (s[self.inserted], s[~self.inserted])}
