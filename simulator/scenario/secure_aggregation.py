"""Scenario section ``[secure_aggregation]``: the server sees only the sum of the cohort's updates.

``mode = "simulated"`` (the default) encodes every update as Flower's SecAgg+ does (weighting by
``num_examples / max_weight``, clipping to ``±clipping_range``, stochastic quantisation to
``quantization_range`` levels, a sum mod ``modulus``) and hands the server the decoded sum alone: the
protocol's numeric error without its cryptography (:mod:`simulator.secagg.encoding`). ``mode = "secaggplus"``
runs Flower's own protocol (``SecAggPlusWorkflow`` + ``secaggplus_mod``) with ``num_shares`` and
``reconstruction_threshold``.

``max_weight`` defaults to the largest client's example count (no precision lost); Flower's own default is
1000, which with 10 examples per client shifts the aggregate by several per cent (refused at load).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from simulator.scenario.base import Strict

__all__ = ["SecureAggregationConfig"]


class SecureAggregationConfig(Strict):
    """What the secure aggregation protocol reveals (the sum, the count, the total
    weight) and its encoding."""

    mode: Literal["simulated", "secaggplus"] = "simulated"
    max_weight: float | None = Field(default=None, gt=0.0)  # None: the largest client's example count
    clipping_range: float = Field(default=8.0, gt=0.0)
    quantization_range: int = Field(default=4194304, ge=2)
    modulus: int = Field(default=4294967296, ge=2)
    num_shares: int = Field(default=3, ge=3)  # secaggplus: shares of each client's secrets
    reconstruction_threshold: int = Field(default=2, ge=2)  # secaggplus: shares needed to unmask
    # secaggplus: each client's chance per round to drop after sharing its keys (its share is recovered)
    drop_after_share_keys: float = Field(default=0.0, ge=0.0, lt=1.0)
    seed: int | None = None  # the stochastic rounding's seed (None: the run's privacy secret)

    @model_validator(mode="after")
    def _shares(self) -> SecureAggregationConfig:
        if self.reconstruction_threshold >= self.num_shares:
            raise ValueError(
                f"reconstruction_threshold = {self.reconstruction_threshold} must be below num_shares = "
                f"{self.num_shares} (Flower's SecAggPlusWorkflow requires it)"
            )
        if self.modulus <= self.quantization_range:
            raise ValueError("modulus must exceed quantization_range (the sum of quantised values wraps)")
        if self.mode == "simulated" and self.drop_after_share_keys:
            raise ValueError(
                "drop_after_share_keys needs mode = 'secaggplus' (the protocol recovers the dropouts)"
            )
        return self
