"""Untargeted model-poisoning attacks as plug-ins of :data:`attacks.base.POISONING_ATTACKS`, one file each.

``sign_flip``, ``gaussian``, ``alie``, ``ipm``, ``fang_krum``, ``fang_trimmed_mean`` (also the attack on the
median), ``min_max``, ``min_sum``, ``agr_tailored``. Each wraps a reviewed pure function of
:mod:`attacks.poisoning` in a :class:`~attacks.base.PoisoningAttack` whose parameters are
``knowledge: "omniscient" | "partial"`` plus the attack's own. A scenario picks one with
``[attacks.poisoning]``.

How a poisoning attack runs (a simulation device)
-------------------------------------------------
Colluding attackers with omniscient knowledge need the benign updates of the round before they send their
own. A simulator has no such information flow between clients, so, as FLPoison and Blades do, the attack
runs as a stage of the server step (:func:`simulator.round.server_step`, between step 8 "decode" and step 9
"observe"):

1. the acting attackers train honestly through the normal client step (``[attacks.backdoor]``, the client
   attack slot, must then be empty);
2. after decoding, the round core's ``Poisoner`` takes the rows of the acting attackers of the round (the
   evaluator's ground truth list, passed in by the engine), calls :meth:`~attacks.base.PoisoningAttack.craft`
   on the other rows (``knowledge = "omniscient"``) or on the attackers' own honest rows
   (``knowledge = "partial"``), and writes the crafted updates into the attackers' rows.

This is equivalent to colluding attackers who know those updates (every benign update of the round, or only
their own) and send the crafted ones instead. Nothing else changes: the server, its observer, its aggregator
and its defenses see only the resulting update matrix, with no flag or id telling them which rows were
crafted. The attackers' example counts (the aggregation weights) are the ones they reported honestly.

Limits of the device: the crafted rows enter as *decoded* updates, so with a lossy per-client compressor they
skip the encode/decode round trip a real attacker's update would go through (the attack is slightly
stronger than in reality); a compressor that aggregates in sketch space has no per-client rows at all and is
refused at load (see :mod:`attacks.poisoning.checks`). The attackers' randomness is a generator derived from
(scenario seed, round, ``"poisoning"``).
"""

from attacks.poisoning.plugins import (  # noqa: F401
    agr_tailored,
    alie,
    fang_krum,
    fang_trimmed_mean,
    gaussian,
    ipm,
    min_max,
    min_sum,
    sign_flip,
)
