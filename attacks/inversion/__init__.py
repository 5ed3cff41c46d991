"""Gradient inversion attacks, one file each; importing registers them."""

from attacks.inversion import dlg, idlg, inverting_gradients  # noqa: F401

__all__ = ["dlg", "idlg", "inverting_gradients"]
