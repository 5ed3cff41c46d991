"""The root :class:`Scenario`: one frozen, validated description of an experiment."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field

from simulator.scenario.attacks import AttacksConfig
from simulator.scenario.audit import AuditConfig
from simulator.scenario.base import Strict
from simulator.scenario.compression import CompressionConfig
from simulator.scenario.core import (
    DataConfig,
    EvaluationConfig,
    FederationConfig,
    ModelConfig,
    OutputConfig,
    SimulationConfig,
    expected_cohort,
)
from simulator.scenario.defenses import DefensesConfig
from simulator.scenario.leakage import LeakageConfig
from simulator.scenario.privacy import PrivacyConfig
from simulator.scenario.secure_aggregation import SecureAggregationConfig

__all__ = ["Scenario"]


class Scenario(Strict):
    """A federated run (``kind = "federated"``) or a standalone leakage experiment (``"leakage"``)."""

    name: str = "scenario"
    description: str = ""
    kind: Literal["federated", "leakage"] = "federated"
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    federation: FederationConfig = FederationConfig()
    simulation: SimulationConfig = SimulationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    attacks: AttacksConfig = AttacksConfig()
    defenses: DefensesConfig = DefensesConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    compression: CompressionConfig = CompressionConfig()
    leakage: LeakageConfig | None = None
    secure_aggregation: SecureAggregationConfig | None = None
    audit: AuditConfig | None = None
    output: OutputConfig = OutputConfig()
    source: str | None = Field(default=None, exclude=True)  # the file it came from (not part of the hash)

    def resolved(self) -> dict:
        """The full scenario with every default filled in (what summary.json echoes)."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """A stable hash of everything that changes results: not the output location, the name or the
        description, so the same experiment reached from two files (or two grids) is one cache entry."""
        d = self.resolved()
        for key in ("output", "name", "description"):
            d.pop(key, None)
        if d.get("privacy", {}).get("noise_seed", 0) is None:  # defaults that keep digests as they were
            d["privacy"].pop("noise_seed")
        for key in ("audit", "secure_aggregation"):
            if d.get(key, 0) is None:
                d.pop(key)
        leak = d.get("leakage") or {}
        if leak.get("clients") == 1 and leak.get("secure_aggregation") is False:  # one client: the old digest
            leak.pop("clients")
            leak.pop("secure_aggregation")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def num_sampled_expected(self) -> float:
        f = self.federation
        return expected_cohort(
            self.data.num_clients, clients_per_round=f.clients_per_round, sampling_rate=f.sampling_rate
        )
