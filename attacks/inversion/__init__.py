"""Gradient inversion attacks, one file each; importing registers them and the load-time inversion checks."""

from attacks.inversion import (  # noqa: F401
    analytic,
    dlg,
    generative,
    idlg,
    inverting_gradients,
    robbing_the_fed,
    sketch_matching,
    soft_label,
)
from attacks.inversion.checks import inversion_problems
from simulator.scenario.loader import SCENARIO_CHECKS

if inversion_problems not in SCENARIO_CHECKS:
    SCENARIO_CHECKS.append(inversion_problems)

__all__ = ["analytic", "dlg", "generative", "idlg", "inverting_gradients", "robbing_the_fed", "sketch_matching", "soft_label"]
