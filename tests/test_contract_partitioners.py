"""Contract of every registered partitioner, parametrised by registry name, default params, through
:func:`simulator.data.partition_indices` (how the framework uses them): 600 examples of 10 classes (60 each,
shuffled) over 10 clients.

Every partitioner: indices in range, sorted, disjoint across clients, the same for the same seed,
different for another seed, every example assigned (the labelled set is chosen so that no partitioner has
a remainder to drop: 600 = 10 clients × 2 shards × 30, and every class is used by some client) and every
client non-empty.

What a partitioner promises beyond that follows its documented parameters (flwr-datasets semantics), read from
its validated default params, so a new partitioner with the same parameter names is held to the same promise:

* ``min_partition_size`` (Dirichlet): every client holds at least that many examples;
* ``num_classes_per_partition`` (pathological): every client holds exactly that many classes;
* ``num_shards_per_partition`` with ``shard_size`` unset (shard): every client holds that many shards of
  ⌊n / (shards per client · clients)⌋ examples, so all clients have the same size.

``EQUAL_SIZES`` names the partitioners whose summary promises equal-size partitions (``iid``).
"""

from __future__ import annotations

import numpy as np
import pytest

from simulator.data.partition import PARTITIONERS, partition_indices
from simulator.registry import import_plugins

import_plugins()

NAMES = PARTITIONERS.names()
N, NUM_CLASSES, CLIENTS, SEED = 600, 10, 10, 3
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(NUM_CLASSES), N // NUM_CLASSES))
#: "Uniformly random, equal-size partitions"
EQUAL_SIZES = {"iid"}
#: "clients may share examples": a population larger than the data set (disjointness and cover do not apply)
OVERLAPPING = {"sample"}


def parts(name: str, seed: int = SEED) -> list[np.ndarray]:
    return partition_indices(LABELS, name, {}, CLIENTS, seed=seed)


def defaults(name: str) -> dict:
    return PARTITIONERS.validate(name, {}).model_dump()


@pytest.mark.parametrize("name", NAMES)
def test_partitions_are_disjoint_in_range_cover_and_non_empty(name: str) -> None:
    p = parts(name)
    assert len(p) == CLIENTS
    for i, idx in enumerate(p):
        assert idx.dtype == np.int64 and idx.ndim == 1
        assert len(idx) > 0, f"{name}: client {i} is empty"
        assert np.all(np.diff(idx) > 0), f"{name}: client {i}'s indices are not sorted and unique"
        assert idx.min() >= 0 and idx.max() < N, f"{name}: client {i} has an index out of range"
    if name in OVERLAPPING:
        return
    everything = np.concatenate(p)
    assert len(np.unique(everything)) == len(everything), f"{name}: partitions overlap"
    assert len(everything) == N, f"{name}: {N - len(everything)} examples are in no partition"


@pytest.mark.parametrize("name", NAMES)
def test_partitions_are_deterministic_for_a_seed(name: str) -> None:
    a, b = parts(name), parts(name)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = parts(name, seed=SEED + 1)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True)), f"{name}: the seed is ignored"


@pytest.mark.parametrize("name", NAMES)
def test_partitions_keep_the_documented_promise(name: str) -> None:
    p = parts(name)
    sizes = [len(x) for x in p]
    params = defaults(name)
    if name in EQUAL_SIZES:
        assert max(sizes) - min(sizes) <= 1, f"{name}: sizes {sizes}"
    if "min_partition_size" in params:
        assert min(sizes) >= params["min_partition_size"], f"{name}: sizes {sizes}"
    if "num_classes_per_partition" in params:
        k = params["num_classes_per_partition"]
        assert all(len(np.unique(LABELS[x])) == k for x in p), f"{name}: not exactly {k} classes per client"
    if "num_shards_per_partition" in params and params.get("shard_size") is None:
        shards = params["num_shards_per_partition"]
        per_client = shards * (N // (shards * CLIENTS))
        assert sizes == [per_client] * CLIENTS, f"{name}: sizes {sizes}"


def test_sample_draws_size_examples_per_client_from_its_own_seed_only() -> None:
    """``sample``: each client holds exactly ``size`` distinct examples, drawn from (seed, client) alone, so a
    client's data does not depend on the population size, and it is computed only when read."""
    small = partition_indices(LABELS, "sample", {"size": 7}, 10, seed=SEED)
    big = partition_indices(LABELS, "sample", {"size": 7}, 10_000, seed=SEED)
    assert len(big) == 10_000 and not big._done  # nothing computed yet
    for i in range(10):
        assert len(small[i]) == 7 and len(np.unique(small[i])) == 7
        np.testing.assert_array_equal(small[i], big[i])
    assert len(big._done) == 10
    other = partition_indices(LABELS, "sample", {"size": 7}, 10, seed=SEED + 1)
    assert any(not np.array_equal(small[i], other[i]) for i in range(10))


@pytest.mark.parametrize("n,k", [(600, 10), (4000, 500), (4000, 7), (10, 10)])
def test_iid_in_numpy_equals_flwr_datasets_iid_partitioner(n: int, k: int) -> None:
    """privsim computes ``iid`` partitions in NumPy, client by client: the same as flwr-datasets'
    IidPartitioner (contiguous shards of the seeded shuffle) on the same table."""
    import datasets
    from flwr_datasets.partitioner import IidPartitioner

    labels = np.arange(n) % 10
    ours = partition_indices(labels, "iid", {}, k, seed=SEED)
    order = np.random.default_rng(SEED).permutation(n)
    ref = IidPartitioner(num_partitions=k)
    ref.dataset = datasets.Dataset.from_dict({"idx": order, "label": labels[order]})
    for i in sorted({0, 1, k // 2, k - 1}):
        np.testing.assert_array_equal(ours[i], np.sort(np.asarray(ref.load_partition(i)["idx"])))
