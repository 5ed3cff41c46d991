"""Scenario section ``[attacks]``: the attacker plan, the client attack, untargeted poisoning, server
observation.

* ``[attacks.backdoor]`` is the *client attack* slot (a ``CLIENT_ATTACKS`` plug-in run inside the acting
  attackers' client step): the backdoors, and data poisoning such as ``label_flip``; the name is historical.
* ``[attacks.poisoning]`` is an update-crafting (untargeted model-poisoning) attack, a ``POISONING_ATTACKS``
  plug-in: the acting attackers train honestly, then the round core replaces their updates with crafted ones
  (see :mod:`attacks.poisoning.plugins`). One of the two at a time.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from simulator.scenario.base import PluginSpec, Strict

__all__ = ["AttackerPlan", "AttacksConfig", "InversionSpec"]


class AttackerPlan(Strict):
    """Which clients are malicious and in which rounds they act."""

    malicious: int | None = Field(default=None, ge=0)  # a count, drawn from the seed ...
    malicious_fraction: float | None = Field(default=None, ge=0.0, le=1.0)  # ... or a fraction ...
    malicious_ids: list[int] | None = None  # ... or explicit partition ids
    start_round: int = Field(default=1, ge=1)
    end_round: int | None = Field(default=None, ge=1)  # last round they act (None: to the end)
    every: int = Field(default=1, ge=1)  # act every k-th round from start_round
    rounds: list[int] | None = None  # explicit rounds (single-shot: [r]); overrides the window
    guarantee_sampled: bool = True  # acting attackers join the cohort (the papers' fixed-frequency setting)
    per_round: int | None = Field(default=None, ge=1)  # how many acting attackers per round (None: all)
    collude: bool = False

    @model_validator(mode="after")
    def _one_way(self) -> AttackerPlan:
        given = [x is not None for x in (self.malicious, self.malicious_fraction, self.malicious_ids)]
        if sum(given) > 1:
            raise ValueError("give one of malicious, malicious_fraction, malicious_ids")
        return self


class InversionSpec(PluginSpec):
    """A server that runs an inversion attack on chosen clients' updates (step 9)."""

    targets: list[int] = Field(default_factory=lambda: [0])  # partition ids to attack when sampled
    rounds: list[int] = Field(default_factory=lambda: [1])
    max_images: int = Field(default=8, ge=1)  # images shown in the grid
    force_sampled: bool = True  # the server (it controls sampling) always samples its targets in those rounds


class AttacksConfig(Strict):
    plan: AttackerPlan = AttackerPlan()
    backdoor: PluginSpec | None = None  # the client attack slot (backdoors, label_flip)
    inversion: InversionSpec | None = None
    # untargeted model poisoning; left out of the dump when unset, so older scenarios keep their digests
    poisoning: PluginSpec | None = Field(default=None, exclude_if=lambda v: v is None)
