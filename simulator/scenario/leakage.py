"""Scenario section ``[leakage]``: a standalone leakage experiment (one model, one payload; one client, or an
aggregate of several).

``label_smoothing`` and ``mixup_lambda`` give the victim soft labels (Wang, Liang & He, ICLR 2024):
with mixup, each victim image ``x`` is replaced by ``λx + (1−λ)x'`` for a seeded partner ``x'`` from the
rest of the data set, with label ``λe_y + (1−λ)e_{y'}``. ``server = "malicious"`` allows attacks that
change the model the server sends (Robbing the Fed). ``public_images`` is the size of the attacker's
public split, drawn from the images outside the victim's batch (and its mixup partners), for attacks
that need public data (generative priors, imprint-bin calibration).

The victim's data set and the model come from ``[data]`` and ``[model]``, the client defenses from
``[defenses.client]`` (applied in order, as in step 5 of a federated round) and the attack from
``[attacks.inversion]``; this section says which images the victim holds, the state of the model
and the client protocol (FedSGD gradient or FedAvg local steps).

Aggregates. ``clients = K`` (default 1) makes K victims: each holds ``num_images`` images of a seeded draw
(K · ``num_images`` in all), or, with ``images`` given, the listed images split evenly in list order (the
list's length must be a multiple of K). Every client computes its payload (same protocol, same model) and
applies the client defenses alone; the server then sees one vector:

* ``secure_aggregation = true``: the example-weighted mean out of Flower's SecAgg+ numerics
  (:func:`simulator.secagg.simulate`, default parameters with ``max_weight`` = the largest client's example
  count, so no precision is lost to the weights; its stochastic rounding is seeded from the scenario seed);
* ``secure_aggregation = false`` with K > 1: the same example-weighted mean, in the clear — what FedAvg
  reveals to a server that keeps only the aggregate (it could also keep every client's update; that is the
  single-client setting, K = 1).

The attack must work on aggregates (``works_on_aggregate``), and compression must be none, when K > 1.
Secure aggregation needs at least two clients (Flower's SecAgg+ refuses fewer).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from simulator.scenario.base import Strict

__all__ = ["LeakageConfig"]


class LeakageConfig(Strict):
    """The victim's batch, the model's training state and the client protocol of a leakage experiment."""

    images: list[int] | None = None  # dataset indices of the victim's images; None: a seeded draw
    num_images: int = Field(default=1, ge=1)  # size of the seeded draw (ignored when images is given)
    protocol: Literal["gradient", "update"] = "gradient"  # FedSGD gradient or FedAvg update Δ
    local_steps: int = Field(default=1, ge=1)  # SGD steps behind an update
    lr: float = Field(default=0.01, gt=0.0)  # local learning rate (update)
    batch_size: int | None = Field(default=None, ge=1)  # local batch size (None: the whole batch)
    # 0: untrained model; else SGD steps on the other images first
    pretrain_steps: int = Field(default=0, ge=0)
    pretrain_lr: float = Field(default=0.05, gt=0.0)
    pretrain_batch_size: int = Field(default=32, ge=1)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)  # the victim trains on label-smoothed targets
    # the victim mixes each image with a partner
    mixup_lambda: float | None = Field(default=None, gt=0.0, lt=1.0)
    server: Literal["honest", "malicious"] = "honest"  # a malicious server may modify the model it sends
    # the attacker's public split (images outside the victim batch)
    public_images: int = Field(default=1000, ge=1)
    clients: int = Field(default=1, ge=1)  # victims whose payloads the server receives as one aggregate
    secure_aggregation: bool = False  # the aggregate comes out of (simulated) SecAgg+; else a clear mean

    @field_validator("secure_aggregation")
    @classmethod
    def _secagg(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("clients", 1) < 2:
            raise ValueError(
                "secure aggregation needs at least 2 clients (Flower's SecAgg+ refuses fewer); "
                "set leakage.clients >= 2"
            )
        return v

    @model_validator(mode="after")
    def _split(self) -> LeakageConfig:
        if self.images is not None and len(self.images) % self.clients:
            raise ValueError(
                f"images: {len(self.images)} listed images do not split evenly over clients = {self.clients}"
            )
        return self

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
        """Images per client."""
        return len(self.images) // self.clients if self.images is not None else self.num_images

    @property
    def total_images(self) -> int:
        """Images of all clients."""
        return self.batch * self.clients
