"""Client partitioners: flwr-datasets' partitioners over an in-memory index table.

The data never goes into Arrow: a ``datasets.Dataset`` of (idx, label) is partitioned and the
client's indices slice the tensors (fast, and identical on every worker given the seed).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, overload

import numpy as np

from simulator.registry import Registry

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

__all__ = [
    "PARTITIONERS",
    "LazyPartitions",
    "adopt_partitions",
    "computed_partitions",
    "contiguous_shard",
    "partition_indices",
]

PARTITIONERS: Registry[Partitioner] = Registry("partitioner")
_CTX = ("num_partitions", "seed")

# Partitions computed up front, by everything they depend on (the labels by digest): the server's and the
# clients' runtimes of one process, and the worker processes it hands them to, compute them once.
PartitionKey = tuple[str, str, int, int, str, str]
_UPFRONT: OrderedDict[PartitionKey, tuple[np.ndarray, ...]] = OrderedDict()
_UPFRONT_KEEP = 16


def _upfront_key(labels: np.ndarray, name: str, params: dict, num_partitions: int, seed: int) -> PartitionKey:
    digest = hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()
    spec = json.dumps(params, sort_keys=True, default=repr)
    return (name, spec, num_partitions, seed, f"{labels.dtype}{labels.shape}", digest)


def _keep(key: PartitionKey, parts: tuple[np.ndarray, ...]) -> None:
    for a in parts:
        a.setflags(write=False)
    _UPFRONT[key] = parts
    _UPFRONT.move_to_end(key)
    while len(_UPFRONT) > _UPFRONT_KEEP:
        _UPFRONT.popitem(last=False)


def computed_partitions() -> list[tuple[PartitionKey, tuple[np.ndarray, ...]]]:
    """The partitions this process computed up front (to hand to a worker process)."""
    return list(_UPFRONT.items())


def adopt_partitions(items: list[tuple[PartitionKey, tuple[np.ndarray, ...]]]) -> None:
    """Take partitions another process computed with :func:`partition_indices` (the same inputs give the
    same partitions, so this process need not import flwr-datasets and compute them again)."""
    for key, parts in items:
        _keep(key, tuple(np.array(a, dtype=np.int64) for a in parts))


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


@PARTITIONERS.register("sample", context=_CTX)
def sample(num_partitions: int, seed: int, size: int = 10):
    """Each client holds ``size`` examples drawn uniformly without replacement from the pool, seeded by
    (seed, client): clients may share examples. For population-scale runs (a population larger than the data
    set, e.g. 10,000 clients of mnist5k); a client's partition is computed only when the client is sampled."""
    # deferred: flwr-datasets pulls in datasets/pyarrow; loaded only to partition
    from flwr_datasets.partitioner import Partitioner

    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")

    class SamplePartitioner(Partitioner):
        @property
        def num_partitions(self) -> int:
            return num_partitions

        def indices(self, partition_id: int) -> np.ndarray:
            n = len(self.dataset)
            rng = np.random.default_rng([seed, 9173, partition_id])
            return rng.choice(n, size=min(size, n), replace=False)

        def load_partition(self, partition_id: int):
            return self.dataset.select(self.indices(partition_id))

    return SamplePartitioner()


class LazyPartitions(Sequence[np.ndarray]):
    """Clients' index arrays computed when first read (a sampled client), then kept: a round costs the
    cohort's partitions, not the population's."""

    def __init__(self, load: Callable[[int], np.ndarray], num_partitions: int) -> None:
        self._load, self._n = load, num_partitions
        self._done: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[np.ndarray]: ...
    def __getitem__(self, i: int | slice) -> np.ndarray | Sequence[np.ndarray]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        if i not in self._done:
            self._done[i] = np.sort(np.asarray(self._load(i), dtype=np.int64))
        return self._done[i]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(self._n))

    def __add__(self, other: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        return (*self, *other)


def contiguous_shard(n: int, num_shards: int, index: int) -> range:
    """Rows of shard ``index`` when ``n`` rows are cut into ``num_shards`` contiguous shards, the first
    ``n mod num_shards`` one row longer (Hugging Face ``Dataset.shard(contiguous=True)``, which flwr-datasets'
    IidPartitioner uses; ``tests/test_contract_partitioners.py`` checks the two agree).

    >>> [list(contiguous_shard(7, 3, i)) for i in range(3)]
    [[0, 1, 2], [3, 4], [5, 6]]
    """
    div, mod = divmod(n, num_shards)
    start = div * index + min(index, mod)
    return range(start, start + div + (1 if index < mod else 0))


def partition_indices(
    labels: np.ndarray, name: str, params: dict, num_partitions: int, seed: int
) -> LazyPartitions:
    """Indices into ``labels`` for each of ``num_partitions`` clients. ``iid`` and ``sample`` compute a
    client's indices in NumPy when the client is first read; the other partitioners go through flwr-datasets
    (whose label-skew partitioners assign every client at once) and are computed up front, once per process
    for the same inputs (or taken from the process that computed them: :func:`adopt_partitions`)."""
    upfront = name not in ("iid", "sample")
    key = _upfront_key(labels, name, params, num_partitions, seed) if upfront else None
    if key is not None and key in _UPFRONT:
        return LazyPartitions(_UPFRONT[key].__getitem__, num_partitions)
    # deferred: Hugging Face datasets (pyarrow) load only when a hub or partitioned set is used
    import datasets

    datasets.disable_progress_bars()
    part = PARTITIONERS.create(name, params, num_partitions=num_partitions, seed=seed)
    # Shuffle the table first: IidPartitioner shards contiguously and has no seed of its own.
    order = np.random.default_rng(seed).permutation(len(labels))
    if name == "iid":
        return LazyPartitions(
            lambda i: order[np.asarray(contiguous_shard(len(order), num_partitions, i))], num_partitions
        )
    part.dataset = datasets.Dataset.from_dict({"idx": order, "label": labels[order].astype(np.int64)})
    if name == "sample":
        return LazyPartitions(lambda i: order[part.indices(i)], num_partitions)
    done = tuple(np.asarray(part.load_partition(i)["idx"], dtype=np.int64) for i in range(num_partitions))
    assert key is not None
    _keep(key, done)
    return LazyPartitions(done.__getitem__, num_partitions)
