"""Robust aggregation rules, one file each; importing this package registers them."""

from defenses.aggregation import (  # noqa: F401
    bulyan,
    centered_clipping,
    dnc,
    fedavg,
    flame,
    fltrust,
    foolsgold,
    krum,
    median,
    multi_metrics,
    norm_clipping,
    rfa,
    rlr,
    signguard,
    trimmed_mean,
)
