"""``build_privacy``: the mechanism for a scenario's ``[privacy]`` section (and a compressor's own DP noise).

Kept apart from :mod:`simulator.dp.mechanism` so that neither mechanism module imports the other.
"""

from __future__ import annotations

from typing import Any

from simulator.dp.accounting import calibrate_noise_multiplier, client_level_accounting
from simulator.dp.mechanism import ClientLevelDP, NoPrivacy, PrivacyMechanism, RecordLevelDP
from simulator.dp.sketch_dp import SketchDP, sketch_accounting

__all__ = ["build_privacy", "randomness_note"]


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


def build_privacy(scenario: Any, compressor: Any = None, *, secret: int | None = None) -> PrivacyMechanism:
    """The mechanism for a scenario's ``[privacy]`` section (see :func:`_build`), with its stated assumptions."""
    return _assumptions(scenario, _build(scenario, compressor, secret=secret))


def _build(scenario: Any, compressor: Any = None, *, secret: int | None = None) -> PrivacyMechanism:
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
    )
