"""Simulated secure aggregation: the numerics of Flower's SecAgg+ (Bell et al., CCS 2020), no cryptography.

See :mod:`simulator.secagg.encoding` for the data flow and what the server learns; importing the package
registers the ``[secure_aggregation]`` load-time checks (:mod:`simulator.secagg.checks`).
"""

from simulator.secagg.checks import secure_aggregation_problems
from simulator.secagg.encoding import (
    SecAggParams,
    SecAggResult,
    aggregate,
    encode_client,
    error_bound,
    error_rms,
    precision_problems,
    quantization_step,
    relative_error_bound,
    simulate,
    weight_factor,
)

__all__ = [
    "SecAggParams",
    "SecAggResult",
    "aggregate",
    "encode_client",
    "error_bound",
    "error_rms",
    "precision_problems",
    "quantization_step",
    "relative_error_bound",
    "secure_aggregation_problems",
    "simulate",
    "weight_factor",
]
