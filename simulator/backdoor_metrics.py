"""How long a backdoor survives once its attackers stop.

Bagdasaryan et al. (AISTATS 2020) and Zhang et al. (Neurotoxin, ICML 2022) measure durability as the number of
rounds after the last attack round until backdoor accuracy falls below a threshold (Neurotoxin: the
"lifespan").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["backdoor_lifespan"]


def backdoor_lifespan(
    backdoor_accuracy: Sequence[tuple[int, float | None]],
    acting_rounds: Sequence[int],
    *,
    threshold: float = 0.1,
) -> dict[str, Any]:
    """Rounds from the last attack round until backdoor accuracy first drops below ``threshold``.

    ``backdoor_accuracy`` holds (round, BA) pairs, BA None or NaN where the round was not evaluated.
    Returns ``after_round`` (the last acting round), ``threshold``, ``rounds`` and ``censored``:

    * BA below the threshold at round r > after_round (the first such evaluated round): rounds = r −
      after_round, censored False;
    * never below it in the evaluated rounds that follow: rounds = the number of rounds that follow (a lower
      bound), censored True;
    * no attack round, or attackers acting in the last round: rounds None (nothing to measure).
    """
    out: dict[str, Any] = {"after_round": None, "threshold": threshold, "rounds": None, "censored": False}
    if not acting_rounds:
        return out
    last = max(acting_rounds)
    out["after_round"] = last
    later = sorted(
        (r, ba) for r, ba in backdoor_accuracy if r > last and ba is not None and not math.isnan(ba)
    )
    if not later:
        return out
    for r, ba in later:
        if ba < threshold:
            out["rounds"] = r - last
            return out
    out["rounds"], out["censored"] = later[-1][0] - last, True
    return out
