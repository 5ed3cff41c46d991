"""In-memory image classification data sets and the dataset registry.

Images are float32 tensors in [0, 1] of shape (N, C, H, W); labels are int64. Keeping pixels in
[0, 1] (no normalisation baked in) lets triggers and reconstructions live in image space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from simulator.registry import Registry

__all__ = ["DATASETS", "ArrayDataset", "from_numpy"]


@dataclass(frozen=True)
class ArrayDataset:
    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64
    num_classes: int
    name: str = ""
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise ValueError(f"{self.name}: images must be (N, C, H, W), got shape {tuple(self.x.shape)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.name}: {self.x.shape[0]} images but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, idx: np.ndarray | torch.Tensor) -> ArrayDataset:
        i = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return ArrayDataset(self.x[i], self.y[i], self.num_classes, self.name, self.class_names)


def from_numpy(
    x: np.ndarray,
    y: np.ndarray,
    *,
    name: str,
    num_classes: int | None = None,
    scale: float | None = None,
    class_names: tuple[str, ...] = (),
) -> ArrayDataset:
    """Build an ArrayDataset from (N, H, W), (N, H, W, C) or (N, C, H, W) arrays."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3):
        x = np.transpose(x, (0, 3, 1, 2))
    x = x.astype(np.float32)
    if scale is None:
        scale = 255.0 if x.max(initial=0.0) > 1.0 else 1.0
    xt = torch.from_numpy(np.ascontiguousarray(x / scale)).clamp_(0.0, 1.0)
    yt = torch.as_tensor(np.asarray(y).astype(np.int64))
    k = int(num_classes if num_classes is not None else int(yt.max()) + 1)
    return ArrayDataset(xt, yt, k, name, class_names)


DATASETS: Registry[ArrayDataset] = Registry("dataset")
