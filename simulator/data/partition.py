"""Client partitioners: flwr-datasets' partitioners over an in-memory index table.

The data never goes into Arrow: a ``datasets.Dataset`` of (idx, label) is partitioned and the
client's indices slice the tensors (fast, and identical on every worker given the seed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from simulator.registry import Registry

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

__all__ = ["PARTITIONERS", "partition_indices"]

PARTITIONERS: Registry[Partitioner] = Registry("partitioner")
_CTX = ("num_partitions", "seed")


@PARTITIONERS.register("iid", context=_CTX)
def iid(num_partitions: int, seed: int):
    """Uniformly random, equal-size partitions (flwr-datasets IidPartitioner)."""
    # deferred: flwr-datasets pulls in datasets/pyarrow; loaded only to partition
    from flwr_datasets.partitioner import IidPartitioner

    return IidPartitioner(num_partitions=num_partitions)


@PARTITIONERS.register("dirichlet", context=_CTX)
def dirichlet(
    num_partitions: int,
    seed: int,
    alpha: float = 0.5,
    min_partition_size: int = 10,
    self_balancing: bool = False,
):
    """Label skew: class proportions per client ~ Dirichlet(α) (flwr-datasets DirichletPartitioner)."""
    # deferred: flwr-datasets pulls in datasets/pyarrow; loaded only to partition
    from flwr_datasets.partitioner import DirichletPartitioner

    return DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min_partition_size,
        self_balancing=self_balancing,
        seed=seed,
    )


@PARTITIONERS.register("pathological", context=_CTX)
def pathological(
    num_partitions: int,
    seed: int,
    num_classes_per_partition: int = 2,
    class_assignment_mode: str = "first-deterministic",
):
    """Each client holds k classes (flwr-datasets PathologicalPartitioner)."""
    # deferred: flwr-datasets pulls in datasets/pyarrow; loaded only to partition
    from flwr_datasets.partitioner import PathologicalPartitioner

    return PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=num_classes_per_partition,
        class_assignment_mode=class_assignment_mode,
        seed=seed,
    )


@PARTITIONERS.register("shard", context=_CTX)
def shard(num_partitions: int, seed: int, num_shards_per_partition: int = 2, shard_size: int | None = None):
    """McMahan et al.'s sort-by-label shards (flwr-datasets ShardPartitioner)."""
    # deferred: flwr-datasets pulls in datasets/pyarrow; loaded only to partition
    from flwr_datasets.partitioner import ShardPartitioner

    return ShardPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_shards_per_partition=num_shards_per_partition,
        shard_size=shard_size,
        seed=seed,
    )


def partition_indices(
    labels: np.ndarray, name: str, params: dict, num_partitions: int, seed: int
) -> list[np.ndarray]:
    """Indices into ``labels`` for each of ``num_partitions`` clients."""
    # deferred: Hugging Face datasets (pyarrow) load only when a hub or partitioned set is used
    import datasets

    datasets.disable_progress_bars()
    part = PARTITIONERS.create(name, params, num_partitions=num_partitions, seed=seed)
    # Shuffle the table first: IidPartitioner shards contiguously and has no seed of its own.
    order = np.random.default_rng(seed).permutation(len(labels))
    part.dataset = datasets.Dataset.from_dict({"idx": order, "label": labels[order].astype(np.int64)})
    return [np.sort(np.asarray(part.load_partition(i)["idx"], dtype=np.int64)) for i in range(num_partitions)]
