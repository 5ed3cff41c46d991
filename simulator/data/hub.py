"""Loaders for data sets that need the network the first time: Hugging Face hub and torchvision.

They are ordinary registered data sets; on this project's CI they are exercised on small local
data that the tests build (a parquet file for the hub loader, a fake torchvision class).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from simulator.data.base import DATASETS, ArrayDataset, from_numpy

__all__ = ["huggingface", "torchvision_dataset"]

_IMAGE_KEYS = ("img", "image", "pixel_values", "pixels")
_LABEL_KEYS = ("label", "labels", "fine_label", "character", "y")


def _to_array(img: Any) -> np.ndarray:  # a PIL image (converted to RGB unless L/RGB) or array-like
    return np.asarray(img.convert("RGB") if getattr(img, "mode", "L") not in ("L", "RGB") else img)


@DATASETS.register("huggingface")
def huggingface(
    name: str,
    split: str = "train",
    subset: str | None = None,
    data_files: dict[str, str] | str | None = None,
    image_key: str | None = None,
    label_key: str | None = None,
    max_examples: int | None = None,
) -> ArrayDataset:
    """A Hugging Face data set by hub name (e.g. ``uoft-cs/cifar10``, ``ylecun/mnist``,
    ``flwrlabs/femnist``) or a local builder (``parquet``/``imagefolder`` with ``data_files``)."""
    # deferred: Hugging Face datasets (pyarrow) load only when a hub or partitioned set is used
    import datasets

    ds = datasets.load_dataset(path=name, name=subset, split=split, data_files=data_files)
    cols = ds.column_names
    ik = image_key or next((k for k in _IMAGE_KEYS if k in cols), None)
    lk = label_key or next((k for k in _LABEL_KEYS if k in cols), None)
    if ik is None or lk is None:
        raise ValueError(f"data set {name!r} has columns {cols}; set image_key and label_key")
    if max_examples is not None:
        ds = ds.select(range(min(max_examples, len(ds))))
    imgs = [_to_array(im) if not isinstance(im, (list, np.ndarray)) else np.asarray(im) for im in ds[ik]]
    x = np.stack(imgs)
    y = np.asarray(ds[lk])
    feat = ds.features.get(lk)
    names = tuple(getattr(feat, "names", ()) or ())
    k = len(names) if names else int(y.max()) + 1
    return from_numpy(x, y, name=f"hf:{name}", num_classes=k, class_names=names)


@DATASETS.register("torchvision")
def torchvision_dataset(
    name: str = "CIFAR10",
    root: str = "~/.cache/privsim/torchvision",
    train: bool = True,
    download: bool = True,
    max_examples: int | None = None,
) -> ArrayDataset:
    """A torchvision data set class by name (CIFAR10, CIFAR100, MNIST, FashionMNIST, EMNIST ...).
    Needs the optional ``vision`` extra (torchvision) and the network for the first download."""
    try:
        # deferred: torchvision is optional
        import torchvision.datasets as tvd
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise RuntimeError(
            "the 'torchvision' data set needs torchvision: pip install 'privsim[vision]'"
        ) from e
    cls = getattr(tvd, name, None)
    if cls is None:
        raise ValueError(f"torchvision.datasets has no {name!r}")
    ds = cls(root=str(Path(root).expanduser()), train=train, download=download)
    data = ds.data if hasattr(ds, "data") else np.stack([np.asarray(ds[i][0]) for i in range(len(ds))])
    x = np.asarray(data)
    y = np.asarray(ds.targets if hasattr(ds, "targets") else [ds[i][1] for i in range(len(ds))])
    if max_examples is not None:
        x, y = x[:max_examples], y[:max_examples]
    names = tuple(getattr(ds, "classes", ()) or ())
    return from_numpy(
        x, y, name=f"torchvision:{name}", num_classes=len(names) or int(y.max()) + 1, class_names=names
    )
