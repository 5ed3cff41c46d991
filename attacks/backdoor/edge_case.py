"""Edge-case backdoor: rare-looking examples of one class, relabelled, mixed into clean data.

Wang, Sreenivasan, Rajput, Vishwakarma, Agarwal, Sohn, Lee & Papailiopoulos, "Attack of the Tails:
Yes, You Really Can Backdoor Federated Learning", NeurIPS 2020. The paper's edge sets are external
(ARDIS "7"s labelled "1" for EMNIST, Southwest Airlines planes labelled "truck" for CIFAR-10). On a
data set without one, the tail of a class is taken from the pool and reserved so no benign client
holds it. Two rules pick it:

* ``"principal"`` (default): the sparse end of the class's first principal component — one coherent
  rare *style*, as ARDIS 7s are for EMNIST (on mnist5k: upright 7s with a long top bar);
* ``"distance"``: the examples farthest from the class mean in pixel space — a mix of unrelated
  oddities (blots, thick or broken strokes) that share no feature a model could learn apart from
  ordinary 7s, so benign training undoes the backdoor within a round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field

from attacks.base import CLIENT_ATTACKS, ClientAttack
from simulator.context import ClientContext, derive_seed
from simulator.data.base import from_numpy

__all__ = ["EdgeCase", "TailRule", "fit_tail"]


class TailRule:
    """A fitted tail rule: scores examples (higher = further into the tail); fitted on the training
    examples of the class and reused unchanged on the test split."""

    def __init__(self, rule: str, mean: torch.Tensor, direction: torch.Tensor | None = None) -> None:
        self.rule, self.mean, self.direction = rule, mean.reshape(-1).to(torch.float64), direction

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).to(torch.float64) - self.mean
        if self.rule == "distance":
            return torch.linalg.vector_norm(flat, dim=1)
        assert self.direction is not None
        return flat @ self.direction

    def select(self, x: torch.Tensor, k: int) -> np.ndarray:
        """Positions of the ``k`` highest-scoring rows, highest first; ties go to the lower position."""
        s = self.scores(x).numpy()
        return np.lexsort((np.arange(len(s)), -s))[:k].astype(np.int64)


def fit_tail(x: torch.Tensor, rule: str) -> TailRule:
    """Fit a tail rule on one class's examples ``x``.

    ``"principal"``: the first principal component of the centred pixels, oriented towards its
    sparse end (the side holding fewer examples; on a tie, the side reaching further), so the tail is
    the rare extreme of the class's main mode of variation. ``"distance"``: L2 distance to the mean.
    """
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    mean = flat.mean(0)
    if rule == "distance":
        return TailRule(rule, mean)
    if flat.shape[0] < 2:
        raise ValueError("the principal tail needs at least 2 examples of the class")
    _, _, vh = torch.linalg.svd(flat - mean, full_matrices=False)
    v = vh[0]
    proj = (flat - mean) @ v
    pos, neg = int((proj > 0).sum()), int((proj < 0).sum())
    if pos > neg or (pos == neg and float(proj.max()) < float(-proj.min())):
        v = -v
    return TailRule(rule, mean, v)


@CLIENT_ATTACKS.register("edge_case")
class EdgeCase(ClientAttack):
    """Edge-case backdoor (Wang et al., NeurIPS 2020): tail examples of ``source_class`` → ``target_label``.

    Parameters
    ----------
    source_class, target_label
        The class whose tail is used and the label the attacker wants for it (ARDIS: 7 → 1).
    edge_size
        Edge examples taken from the training pool (the ``edge_size`` examples of ``source_class``
        furthest into its tail); all of them are kept from every client.
    tail
        How the tail is found: ``"principal"`` (the sparse end of the class's first principal
        component) or ``"distance"`` (farthest from the class mean); see the module docstring.
    clean_ratio
        Clean examples per edge example in the attacker's training set, drawn from its own partition
        (OOD_FL: 400 clean + 100 edge = 4); None: the whole partition.
    edge_path
        A ``.npz`` with ``x`` (images, any of (N,H,W), (N,H,W,C), (N,C,H,W), uint8 or [0, 1] floats)
        and ``y`` (their true labels), e.g. Southwest planes for CIFAR-10. Replaces the pool tail.
    holdout_fraction
        With ``edge_path``: the share of the file kept out of training for the backdoor test set.

    Notes
    -----
    Backdoor test set: with the pool tail, the same fitted rule on the test split — that split's
    examples of ``source_class`` furthest into the tail the training examples defined, as many as the
    same tail share (edge_size / training examples of the class); with ``edge_path``, the held-out
    part of the file.
    """

    target_label: int  # a targeted attack: never the base class's None

    def __init__(
        self,
        source_class: Annotated[int, Field(ge=0)] = 7,
        target_label: Annotated[int, Field(ge=0)] = 1,
        edge_size: Annotated[int, Field(ge=1)] = 100,
        clean_ratio: Annotated[float, Field(ge=0.0)] | None = 4.0,
        edge_path: str | None = None,
        holdout_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2,
        tail: Literal["principal", "distance"] = "principal",
    ) -> None:
        if source_class == target_label:
            raise ValueError("source_class and target_label must differ")
        self.source_class, self.target_label, self.edge_size = source_class, target_label, edge_size
        self.clean_ratio, self.edge_path, self.holdout_fraction = clean_ratio, edge_path, holdout_fraction
        self.tail = tail
        self._edge_x: torch.Tensor | None = None  # the attacker's edge examples (training part)
        self._edge_test: torch.Tensor | None = None  # held-out edge examples (edge_path only)
        self._rule: TailRule | None = None  # the tail rule fitted on the training class (pool tail only)
        self._tail_share: float | None = None

    def _load_file(self) -> None:
        if self.edge_path is None or self._edge_x is not None:
            return
        path = Path(self.edge_path).expanduser()
        with np.load(path) as f:
            if "x" not in f:
                raise ValueError(f"{path}: an edge set needs an array 'x' (and 'y')")
            y = f["y"] if "y" in f else np.full(len(f["x"]), self.source_class)
            ds = from_numpy(f["x"], y, name=path.stem, num_classes=int(max(int(np.max(y)), 0)) + 1)
        if len(ds) < 2:
            raise ValueError(f"{path}: an edge set needs at least 2 images, got {len(ds)}")
        perm = np.random.default_rng(derive_seed("edge_case", path.name, len(ds))).permutation(len(ds))
        k = min(max(1, round(self.holdout_fraction * len(ds))), len(ds) - 1)
        self._edge_test, self._edge_x = ds.x[np.sort(perm[:k])], ds.x[np.sort(perm[k:])]

    def reserve(self, train: Any) -> Any:
        """Pool positions of the edge set (None with ``edge_path``); remembers the examples."""
        if self.edge_path is not None:
            self._load_file()
            return None
        src = np.flatnonzero(train.y.numpy() == self.source_class)
        if len(src) <= self.edge_size:
            raise ValueError(
                f"edge_size {self.edge_size} needs more than {self.edge_size} training examples "
                f"of class {self.source_class}; the pool has {len(src)}"
            )
        xs = train.x[torch.as_tensor(src)]
        self._rule = fit_tail(xs, self.tail)
        chosen = src[self._rule.select(xs, self.edge_size)]
        self._edge_x = train.x[torch.as_tensor(chosen)]
        self._tail_share = self.edge_size / len(src)
        return chosen

    def edge_examples(self) -> torch.Tensor:
        """The attacker's edge examples (training part)."""
        self._load_file()
        if self._edge_x is None:
            raise RuntimeError(
                "edge_case has no edge set: the data builder must call reserve() first, or give edge_path"
            )
        return self._edge_x

    def poison(
        self, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        edge = self.edge_examples()
        if tuple(edge.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(
                f"edge images {tuple(edge.shape[1:])} do not match the data {tuple(x.shape[1:])}"
            )
        n_clean = int(x.shape[0])
        if self.clean_ratio is not None:
            n_clean = min(n_clean, round(self.clean_ratio * edge.shape[0]))
        keep = torch.randperm(int(x.shape[0]), generator=ctx.generator("backdoor/edge-clean"))[:n_clean]
        ye = torch.full((int(edge.shape[0]),), self.target_label, dtype=y.dtype)
        return torch.cat([x[keep], edge.to(x.dtype)]), torch.cat([y[keep], ye])

    def backdoor_testset(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        self._load_file()
        if self._edge_test is not None:
            xb = self._edge_test
        else:
            src = torch.nonzero(y == self.source_class).reshape(-1)
            if len(src) == 0:
                return x[:0], y[:0]
            share = self._tail_share if self._tail_share is not None else self.edge_size / max(len(src), 1)
            k = min(len(src), max(1, round(share * len(src))))
            xs = x[src]
            rule = self._rule if self._rule is not None else fit_tail(xs, self.tail)
            xb = xs[torch.as_tensor(rule.select(xs, k))]
        return xb.to(x.dtype), torch.full((int(xb.shape[0]),), self.target_label, dtype=y.dtype)
