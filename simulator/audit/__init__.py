"""Empirical privacy auditing: ε lower bounds and estimates from canary membership scores.

See :mod:`simulator.audit.estimators` (pure numpy/scipy; no torch). The names below are loaded from it on
first use, so that a process that only plays clients (which imports :mod:`simulator.audit.record`) does not
pay scipy.stats' import (about a second).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulator.audit.estimators import (
        OneRunBound,
        auc,
        epsilon_from_mu,
        gaussian_dp_mu,
        gaussian_fit_epsilon,
        null_cosine_std,
        one_run_epsilon_lower_bound,
    )

__all__ = [
    "OneRunBound",
    "auc",
    "epsilon_from_mu",
    "gaussian_dp_mu",
    "gaussian_fit_epsilon",
    "null_cosine_std",
    "one_run_epsilon_lower_bound",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("simulator.audit.estimators"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
