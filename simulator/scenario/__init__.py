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

__all__ = ["PluginSpec", "Strict", "Scenario", "ScenarioError", "Problem", "load_scenario", "scenario_from_dict",
           "apply_overrides", "PLUGIN_FIELDS", "SCENARIO_CHECKS", "scenario_check"]
