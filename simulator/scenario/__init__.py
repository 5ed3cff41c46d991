"""Scenario files: schema, loading, overrides and error reporting."""

from simulator.scenario.base import PluginSpec, Strict
from simulator.scenario.loader import (
    PLUGIN_FIELDS,
    SCENARIO_CHECKS,
    Problem,
    ScenarioError,
    apply_overrides,
    load_scenario,
    scenario_check,
    scenario_from_dict,
)
from simulator.scenario.schema import Scenario

__all__ = [
    "PLUGIN_FIELDS",
    "SCENARIO_CHECKS",
    "PluginSpec",
    "Problem",
    "Scenario",
    "ScenarioError",
    "Strict",
    "apply_overrides",
    "load_scenario",
    "scenario_check",
    "scenario_from_dict",
]
