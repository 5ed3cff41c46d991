"""Gradient inversion attacks, one file each; importing registers them and the load-time inversion checks."""

from attacks.inversion import dlg, idlg, inverting_gradients  # noqa: F401
from simulator.scenario.inversion_checks import inversion_problems
from simulator.scenario.loader import SCENARIO_CHECKS

if inversion_problems not in SCENARIO_CHECKS:
    SCENARIO_CHECKS.append(inversion_problems)

__all__ = ["dlg", "idlg", "inverting_gradients"]
