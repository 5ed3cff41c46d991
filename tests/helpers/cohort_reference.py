"""The reference a vectorised cohort is checked against: each client trained alone by
:func:`simulator.training.train_local`, with the same per-client generators the cohort gets."""

from __future__ import annotations

import copy

import torch
from torch import nn

from simulator.training import LocalTrainConfig, TrainStats, train_local
from simulator.vectorised import CohortMember, Kernels, train_cohort

Trained = list[tuple[dict[str, torch.Tensor], TrainStats]]


def client_data(
    sizes: tuple[int, ...], shape: tuple[int, ...], seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random examples (10 classes) for clients of ``sizes`` examples each."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)) for n in sizes]


def _generator(i: int) -> torch.Generator:
    return torch.Generator().manual_seed(100 + i)


def per_client(
    model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]], cfg: LocalTrainConfig
) -> Trained:
    """Each client trained alone from ``model``'s weights: its parameters and statistics."""
    out = []
    for i, (x, y) in enumerate(data):
        w = copy.deepcopy(model)
        stats = train_local(w, x, y, cfg, generator=_generator(i))
        out.append(({n: p.detach() for n, p in w.named_parameters()}, stats))
    return out


def vectorised(
    model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]], cfg: LocalTrainConfig, kernels: Kernels
) -> Trained:
    """The same clients as one vectorised cohort."""
    members = [CohortMember(x, y, _generator(i)) for i, (x, y) in enumerate(data)]
    return train_cohort(model, members, cfg, kernels)
