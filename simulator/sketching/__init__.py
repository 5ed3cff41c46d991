"""Gradient sketching and compression operators; importing registers them.

Registered compressors: ``none``, sketched FedAvg (``gaussian_sketch``, ``srht``, ``count_sketch``, each with
optional DP on the sketch), ``fetchsgd``, sparsifiers (``topk``, ``randk``) and client error feedback around a
contractive compressor (``ef``, ``ef21``, ``econtrol``).
"""

from simulator.sketching.base import COMPRESSORS, ArraySpec, Compressor
from simulator.sketching.checks import compression_problems  # registers the [compression] load-time check
from simulator.sketching.comm import CommCost, communication_cost, payload_bytes
from simulator.sketching.error_feedback import EF21, EControl, ErrorFeedback
from simulator.sketching.fetchsgd import FetchSGD
from simulator.sketching.operators import SRHT, CountSketch, GaussianSketch, SketchOperator
from simulator.sketching.sketched import (
    CountSketchCompressor,
    GaussianSketchCompressor,
    SketchCompressor,
    SRHTCompressor,
)
from simulator.sketching.sparsify import RandK, TopK

__all__ = [
    "COMPRESSORS",
    "EF21",
    "SRHT",
    "ArraySpec",
    "CommCost",
    "Compressor",
    "CountSketch",
    "CountSketchCompressor",
    "EControl",
    "ErrorFeedback",
    "FetchSGD",
    "GaussianSketch",
    "GaussianSketchCompressor",
    "RandK",
    "SRHTCompressor",
    "SketchCompressor",
    "SketchOperator",
    "TopK",
    "communication_cost",
    "compression_problems",
    "payload_bytes",
]
