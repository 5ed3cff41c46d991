"""Gradient inversion attacks, one file each; importing registers them and the load-time inversion checks."""

from attacks.inversion import (
    aggregate_labels,
    analytic,
    cocktail_party,
    dlg,
    generative,
    idlg,
    inverting_gradients,
    robbing_the_fed,
    sketch_matching,
    soft_label,
)
from attacks.inversion.checks import inversion_problems  # registers the load-time inversion check

__all__ = [
    "aggregate_labels",
    "analytic",
    "cocktail_party",
    "dlg",
    "generative",
    "idlg",
    "inversion_problems",
    "inverting_gradients",
    "robbing_the_fed",
    "sketch_matching",
    "soft_label",
]
