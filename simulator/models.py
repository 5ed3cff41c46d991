"""Models, built from the data set's input shape and class count. All are Opacus-compatible:
no in-place activations, and normalisation layers that Opacus supports (GroupNorm) on request."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from simulator.registry import Registry

__all__ = ["MLP", "MODELS", "LeNetDLG", "ResNet18", "SmallCNN", "build_model"]

MODELS: Registry[nn.Module] = Registry("model")
_CTX = ("input_shape", "num_classes")


def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU(inplace=False), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh()}[name]


@MODELS.register("mlp", context=_CTX)
class MLP(nn.Module):
    """Fully connected network; the first layer has a bias (analytic inversion needs it)."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden: list[int] = [200, 200],  # noqa: B006
        activation: str = "relu",
    ) -> None:
        super().__init__()
        dims = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in itertools.pairwise(dims):
            layers += [nn.Linear(a, b), _act(activation)]
        layers.append(nn.Linear(dims[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@MODELS.register("cnn", context=_CTX)
class SmallCNN(nn.Module):
    """Two 5×5 conv blocks (ReLU, 2×2 max-pool) and two dense layers (the FedAvg paper's CNN).
    ``pool = "avg"``: 2×2 average pooling instead, a model the vectorised cohort can also train with batched
    kernels (:func:`simulator.vectorised.why_not_vectorised` refuses max-pooling there; exact kernels take
    both). Channels-last memory makes its local step faster on a CPU (:mod:`simulator.memory_format`)."""

    channels_last_pays = True

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: list[int] = [32, 64],  # noqa: B006
        hidden: int = 128,
        pool: str = "max",
    ) -> None:
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"pool {pool!r}: 'max' or 'avg'")
        c, h, w = input_shape
        blocks: list[nn.Module] = []
        for out in channels:
            pooling = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
            blocks += [nn.Conv2d(c, out, 5, padding=2), nn.ReLU(inplace=False), pooling]
            c, h, w = out, h // 2, w // 2
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(inplace=False), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@MODELS.register("lenet", context=_CTX)
class LeNetDLG(nn.Module):
    """The LeNet variant of DLG (Zhu et al., NeurIPS 2019): three 5×5 conv layers of 12 channels with
    sigmoid activations (strides 2, 2, 1) and one linear layer. Twice-differentiable everywhere. Channels-last
    memory makes its local step faster on a CPU (:mod:`simulator.memory_format`)."""

    channels_last_pays = True

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, channels: int = 12, activation: str = "sigmoid"
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        self.body = nn.Sequential(
            nn.Conv2d(c, channels, 5, padding=2, stride=2),
            _act(activation),
            nn.Conv2d(channels, channels, 5, padding=2, stride=2),
            _act(activation),
            nn.Conv2d(channels, channels, 5, padding=2, stride=1),
            _act(activation),
        )
        hh, ww = (h + 1) // 2, (w + 1) // 2
        hh, ww = (hh + 1) // 2, (ww + 1) // 2
        self.fc = nn.Linear(channels * hh * ww, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, ch), ch)
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'group', 'batch' or 'none', got {kind!r}")


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _norm(norm, cout)
        self.act = nn.ReLU(inplace=False)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.n1(self.conv1(x)))
        out = self.n2(self.conv2(out))
        return self.act(out + self.short(x))  # not in place: Opacus hooks need it


@MODELS.register("resnet18", context=_CTX)
class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3×3 stem, no max-pool; He et al., 2016) with GroupNorm by default so
    that Opacus can train it; ``norm = "batch"`` for the usual BatchNorm."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, norm: str = "group", width: int = 64
    ) -> None:
        super().__init__()
        c = input_shape[0]
        self.stem = nn.Sequential(
            nn.Conv2d(c, width, 3, 1, 1, bias=False), _norm(norm, width), nn.ReLU(inplace=False)
        )
        layers, cin = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            stride = 1 if i == 0 else 2
            layers += [_Block(cin, cout, stride, norm), _Block(cout, cout, 1, norm)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


def build_model(
    name: str, params: dict, *, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> nn.Module:
    """Build a model with seeded initial weights (the same on every process)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS.create(name, params, input_shape=tuple(input_shape), num_classes=num_classes)
