"""The federated view of a data set: a global test split for the server and one partition per client."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from simulator.data.base import DATASETS, ArrayDataset
from simulator.data.partition import partition_indices

__all__ = ["FederatedData", "build_federated_data", "stratified_split"]


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class seeded split into (train, test) index arrays."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = round(len(idx) * test_fraction)
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@dataclass(frozen=True)
class FederatedData:
    train: ArrayDataset  # the pool the clients' partitions index into
    test: ArrayDataset  # the global test split (server side)
    client_indices: Sequence[np.ndarray]  # a LazyPartitions, or a tuple when computed up front
    client_test_indices: tuple[np.ndarray, ...] = field(default=())
    reserved: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # kept from all clients

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.train.input_shape

    def client(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(self.client_indices[pid])
        return self.train.x[idx], self.train.y[idx]

    def client_test(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.client_test_indices:
            return self.train.x[:0], self.train.y[:0]
        idx = torch.as_tensor(self.client_test_indices[pid])
        return self.train.x[idx], self.train.y[idx]


def build_federated_data(
    *,
    dataset: str,
    dataset_params: dict,
    num_clients: int,
    partitioner: str,
    partitioner_params: dict,
    test_fraction: float,
    client_test_fraction: float,
    seed: int,
    max_examples: int | None = None,
    reserve=None,
) -> FederatedData:
    """Load, split and partition deterministically from ``seed``.

    ``reserve(train_dataset) -> indices`` names training-pool examples that no client may hold
    (an edge-case attacker's private set, for instance).
    """
    full = DATASETS.create(dataset, dataset_params)
    if max_examples is not None and max_examples < len(full):
        keep, _ = stratified_split(full.y.numpy(), 1.0 - max_examples / len(full), seed + 7)
        full = full.subset(keep)
    tr_idx, te_idx = stratified_split(full.y.numpy(), test_fraction, seed)
    train, test = full.subset(tr_idx), full.subset(te_idx)
    chosen = reserve(train) if reserve is not None else None
    reserved = np.asarray(chosen if chosen is not None else [], dtype=np.int64)
    pool = np.setdiff1d(np.arange(len(train)), reserved)
    lazy = partition_indices(train.y.numpy()[pool], partitioner, partitioner_params, num_clients, seed)
    if client_test_fraction == 0 and len(reserved) == 0:  # partitions computed as clients are sampled
        return FederatedData(train, test, lazy, (), reserved)
    parts = [pool[p] for p in lazy]
    tests: list[np.ndarray] = []
    if client_test_fraction > 0:
        rng = np.random.default_rng(seed + 1)
        new_parts = []
        for p in parts:
            p = rng.permutation(p)
            k = round(len(p) * client_test_fraction)
            tests.append(np.sort(p[:k]))
            new_parts.append(np.sort(p[k:]))
        parts = new_parts
    return FederatedData(train, test, tuple(parts), tuple(tests), reserved)
