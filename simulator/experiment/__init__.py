"""Standalone experiments outside Flower (leakage: one client, one payload, one inversion attack)."""

from simulator.experiment.leakage import (
    LeakageCase,
    attack_update,
    client_payload,
    gradient_view,
    last_layer_case,
    prepare_leakage,
    run_experiment,
    run_leakage,
    save_grid,
)

__all__ = [
    "LeakageCase",
    "attack_update",
    "client_payload",
    "gradient_view",
    "last_layer_case",
    "prepare_leakage",
    "run_experiment",
    "run_leakage",
    "save_grid",
]
