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
from attacks.inversion.checks import inversion_problems  # registers the load-time inversion check

__all__ = ["inversion_problems", "analytic", "dlg", "generative", "idlg", "inverting_gradients", "robbing_the_fed", "sketch_matching", "soft_label"]
