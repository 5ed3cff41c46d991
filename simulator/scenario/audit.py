"""Scenario section ``[audit]``: an empirical privacy audit beside the ledger's ε (see
:mod:`simulator.audit`).

Layout::

    [audit]
    level = "client"      # "client": canary clients (Andrew et al., ICLR 2024)
                          # "record": canary examples in clients' data (Steinke, Nasr, Jagielski,
                          # NeurIPS 2023)
    canaries = 1000       # each inserted with probability ½
    confidence = 0.95     # of the one-run lower bound ε̂
    canary_norm = 1.0     # client level without DP: the canaries' update norm (default: the round's
                          # median norm)

Cross-section rules (what each level can audit) are checked with the privacy rules in
:mod:`simulator.dp.checks`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from simulator.scenario.base import Strict

__all__ = ["AuditConfig"]


class AuditConfig(Strict):
    level: Literal["client", "record"] = "client"
    canaries: int = Field(default=1000, ge=2)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    canary_norm: float | None = Field(default=None, gt=0.0)
    seed: int | None = None  # the canaries' directions and coins; None: derived from the scenario seed
