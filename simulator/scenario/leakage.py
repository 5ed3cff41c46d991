"""Scenario section ``[leakage]``: a standalone leakage experiment (one client, one model, one payload).

The victim's data set and the model come from ``[data]`` and ``[model]``, the client defenses from
``[defenses.client]`` (applied in order, as in step 5 of a federated round) and the attack from
``[attacks.inversion]``; this section says which images the victim holds, the state of the model
and the client protocol (FedSGD gradient or FedAvg local steps).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from simulator.scenario.base import Strict

__all__ = ["LeakageConfig"]


class LeakageConfig(Strict):
    """The victim's batch, the model's training state and the client protocol of a leakage experiment."""

    images: list[int] | None = None  # dataset indices of the victim's images; None: a seeded draw
    num_images: int = Field(1, ge=1)  # size of the seeded draw (ignored when images is given)
    protocol: Literal["gradient", "update"] = "gradient"  # FedSGD gradient or FedAvg update Δ
    local_steps: int = Field(1, ge=1)  # SGD steps behind an update
    lr: float = Field(0.01, gt=0.0)  # local learning rate (update)
    batch_size: int | None = Field(None, ge=1)  # local batch size (None: the whole batch)
    pretrain_steps: int = Field(0, ge=0)  # 0: untrained model; else SGD steps on the other images first
    pretrain_lr: float = Field(0.05, gt=0.0)
    pretrain_batch_size: int = Field(32, ge=1)

    @field_validator("images")
    @classmethod
    def _images(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("empty: give dataset indices or leave it out for a seeded draw")
            if any(i < 0 for i in v):
                raise ValueError("dataset indices must be >= 0")
            if len(set(v)) != len(v):
                raise ValueError("repeated indices")
        return v

    @property
    def batch(self) -> int:
        return len(self.images) if self.images is not None else self.num_images
