"""``build_privacy``: the mechanism for a scenario's ``[privacy]`` section (and a compressor's own DP noise).

Kept apart from :mod:`simulator.dp.mechanism` so that neither mechanism module imports the other.
"""

from __future__ import annotations

import math
from typing import Any

from simulator.dp.accounting import calibrate_noise_multiplier, client_level_accounting
from simulator.dp.mechanism import ClientLevelDP, NoPrivacy, PrivacyMechanism, RecordLevelDP
from simulator.dp.sketch_dp import SketchDP, sketch_accounting

__all__ = ["build_privacy", "randomness_note", "secure_aggregation_slack"]


def randomness_note(scenario: Any) -> str:
    if scenario.privacy.noise_seed is not None:
        return (
            "privacy.noise_seed: reproducible, but anyone holding the scenario can regenerate the noise "
            "(experiments only)"
        )
    return (
        "fresh OS entropy per process: not derivable from the scenario, the seed, the round or the client id"
    )


def _assumptions(scenario: Any, mech: PrivacyMechanism) -> PrivacyMechanism:
    ledger = mech.ledger
    ws = scenario.model.warm_start
    if ledger is not None and ws is not None and ws.checkpoint is not None:
        ledger.notes.append(
            f"warm start from {ws.checkpoint!r}: ε assumes that checkpoint saw none of the clients' "
            f"data (a checkpoint trained on them voids it)"
        )
    return mech


def build_privacy(
    scenario: Any, compressor: Any = None, *, secret: int | None = None, dim: int | None = None
) -> PrivacyMechanism:
    """The mechanism for a scenario's ``[privacy]`` section (see :func:`_build`), with its stated assumptions.

    ``dim``: the model's update length, needed with ``[secure_aggregation]`` (the quantised update's norm)."""
    return _assumptions(scenario, _build(scenario, compressor, secret=secret, dim=dim))


def secure_aggregation_slack(scenario: Any, dim: int | None) -> float:
    """How far SecAgg+'s stochastic rounding can move a clipped update (L2), in update units: at most one
    quantisation step per coordinate, ``√d · 2·clipping_range / quantization_range · max_weight`` (DP clients
    send weight 1). Added to the clip norm in the ledger's sensitivity: the sum is of *quantised* updates."""
    sa = scenario.secure_aggregation
    if sa is None:
        return 0.0
    if dim is None:
        raise ValueError("build_privacy needs dim (the update length) with [secure_aggregation]")
    return math.sqrt(dim) * 2.0 * sa.clipping_range / sa.quantization_range * (sa.max_weight or 1.0)


def _build(
    scenario: Any, compressor: Any = None, *, secret: int | None = None, dim: int | None = None
) -> PrivacyMechanism:
    """The mechanism for a scenario's ``[privacy]`` section; ``secret`` seeds its server-side noise.

    With ``level = "none"`` and a compressor that noises its sketches (``privacy_params()`` not None), the
    mechanism is :class:`~simulator.dp.sketch_dp.SketchDP`, which accounts that noise."""
    p = scenario.privacy
    note = randomness_note(scenario)
    if p.level == "none":
        params = getattr(compressor, "privacy_params", lambda: None)()
        if params is not None:
            z, c = params
            return SketchDP(
                sketch_accounting(scenario, z),
                c,
                scenario.compression.name,
                sum_aggregator=scenario.defenses.aggregator.name == "fedavg",
                randomness=note,
            )
        return NoPrivacy()
    if p.level == "record":
        return RecordLevelDP(
            p.record,
            delta=p.record.delta or p.delta,
            rounds=scenario.federation.rounds,
            target_epsilon=p.target_epsilon,
            on_budget=p.on_budget,
            randomness=note,
        )
    acc = client_level_accounting(scenario)
    if p.target_epsilon is not None and p.on_budget == "calibrate":
        z = calibrate_noise_multiplier(
            target_epsilon=p.target_epsilon,
            rounds=scenario.federation.rounds,
            make=lambda z: client_level_accounting(scenario, z),
        )
        acc = client_level_accounting(scenario, z)
    inv = scenario.attacks.inversion
    forced = {r: tuple(inv.targets) for r in inv.rounds} if inv is not None and inv.force_sampled else {}
    observed = tuple(inv.rounds) if inv is not None else ()
    return ClientLevelDP(
        p.client,
        acc,
        expected_clients=scenario.num_sampled_expected,
        target_epsilon=p.target_epsilon,
        on_budget=p.on_budget,
        forced=forced,
        observed_rounds=observed,
        secret=secret,
        randomness=note,
        secure_aggregation=scenario.secure_aggregation is not None,
        sensitivity_slack=secure_aggregation_slack(scenario, dim),
    )
