"""Shared pieces of the scenario schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PluginSpec", "Strict"]


class Strict(BaseModel):
    """Frozen, no unknown keys: a typo is an error, never a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginSpec(Strict):
    """A registered plug-in chosen by name, with its parameters (validated against the plug-in)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
