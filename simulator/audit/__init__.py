"""Empirical privacy auditing: ε lower bounds and estimates from canary membership scores.

See :mod:`simulator.audit.estimators` (pure numpy/scipy; no torch).
"""

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
