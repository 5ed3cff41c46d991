"""Composition of backdoor attacks: a model-level attack wraps a data-level one.

Model replacement, PGD and Neurotoxin change *how* the attacker trains and what it submits, not
*what* it learns; the backdoor itself (BadNets trigger, DBA stripe, edge-case examples) comes from a
``base`` attack named in the scenario. :class:`ComposedAttack` delegates the data-side hooks
(``reserve``, ``poison``, ``backdoor_testset``, ``target_label``) to that base and chains the
training hooks and the update transform, so wrappers can also be stacked (Neurotoxin over PGD over
edge-case).

In a scenario the base is a name or a table::

    [attacks.backdoor]
    name = "pgd"
    [attacks.backdoor.params]
    base = "edge_case"                     # or: base = { name = "badnets", params = { size = 3 } }
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from attacks.base import CLIENT_ATTACKS, ClientAttack
from simulator.context import ClientContext
from simulator.flat import Layout, unflatten
from simulator.registry import UnknownName
from simulator.training import TrainHooks

__all__ = [
    "BaseSpec",
    "ChainedHooks",
    "ComposedAttack",
    "chain_hooks",
    "named_global_params",
    "project_l2",
    "scale_factor_of",
]


class BaseSpec(BaseModel):
    """The data-level attack a wrapper builds on: a registered client-attack name and its params.

    A bare string is accepted as the name. Name and params are checked against the registry when
    the scenario is loaded, so a typo fails early with the list of known names.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _known(self) -> BaseSpec:
        try:
            CLIENT_ATTACKS.validate(self.name, self.params)
        except UnknownName as err:  # a KeyError: re-raise as ValueError so pydantic reports it
            raise ValueError(str(err)) from None
        return self

    def build(self) -> ClientAttack:
        return CLIENT_ATTACKS.create(self.name, self.params)


class ChainedHooks(TrainHooks):
    """Several :class:`TrainHooks` run in order; extra losses are summed."""

    def __init__(self, hooks: list[TrainHooks]) -> None:
        self.hooks = hooks

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        terms = [t for t in (h.extra_loss(model, x, y) for h in self.hooks) if t is not None]
        return torch.stack([t.reshape(()) for t in terms]).sum() if terms else None

    def before_step(self, model: nn.Module, step: int) -> None:
        for h in self.hooks:
            h.before_step(model, step)

    def after_step(self, model: nn.Module, step: int) -> None:
        for h in self.hooks:
            h.after_step(model, step)


def chain_hooks(*hooks: TrainHooks | None) -> TrainHooks | None:
    """Combine hooks, dropping Nones: None for none, the hook itself for one."""
    present = [h for h in hooks if h is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else ChainedHooks(present)


def project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Project ``delta`` onto the L2 ball of radius ``eps`` (unchanged when already inside).

    >>> project_l2(torch.tensor([3.0, 4.0]), 1.0).tolist()
    [0.6000000238418579, 0.800000011920929]
    """
    norm = float(torch.linalg.vector_norm(delta))
    if norm <= eps:
        return delta
    return delta * (eps / norm)


def named_global_params(
    model: nn.Module, global_vector: torch.Tensor, layout: Layout
) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Pairs (trainable parameter, its global value) for every trainable parameter in ``layout``."""
    glob = unflatten(global_vector, layout)
    return [
        (p, glob[name].to(p.device, p.dtype))
        for name, p in model.named_parameters()
        if p.requires_grad and name in glob
    ]


def scale_factor_of(attack: ClientAttack, ctx: ClientContext) -> float:
    """How much ``attack.transform`` multiplies an update by (1 for attacks that do not scale)."""
    fn = getattr(attack, "scale_factor", None)
    return float(fn(ctx)) if callable(fn) else 1.0


class ComposedAttack(ClientAttack):
    """A model-level attack over a data-level ``base``; every hook defaults to the base's.

    Subclasses add their own training hooks with :func:`chain_hooks` and their own update edit
    around ``self.base.transform``.
    """

    def __init__(self, base: BaseSpec | str | ClientAttack) -> None:
        if isinstance(base, ClientAttack):
            self.base = base
        else:
            self.base = (base if isinstance(base, BaseSpec) else BaseSpec(name=base)).build()

    @property
    def target_label(self) -> int | None:  # type: ignore[override]  # read-only view of the base's label
        return self.base.target_label

    def reserve(self, train: Any) -> Any:
        return self.base.reserve(train)

    def poison(
        self, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.poison(x, y, ctx)

    def hooks(self, ctx: ClientContext) -> TrainHooks | None:
        return self.base.hooks(ctx)

    def transform(self, delta: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        return self.base.transform(delta, ctx)

    def backdoor_testset(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.base.backdoor_testset(x, y)

    def scale_factor(self, ctx: ClientContext) -> float:
        """The base's scale factor (wrappers that scale multiply their own in)."""
        return scale_factor_of(self.base, ctx)
