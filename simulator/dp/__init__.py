"""Differential privacy: Opacus DP-SGD on clients, client-level DP-FedAvg, privacy accounting.

Importing the package registers :func:`simulator.dp.checks.privacy_problems` as a load-time scenario check.
"""

from simulator.dp.checks import privacy_problems

__all__ = ["privacy_problems"]
