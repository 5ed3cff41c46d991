"""Accounting for DP on the sketch (Song, Wang, Yu, Zhang, ICML 2023): the ε of a sketching compressor's noise.

A sketching compressor with ``clip_norm = C`` and ``noise_multiplier = z`` (see
:mod:`simulator.sketching.sketched`) releases, per sampled client and round, ``R·clip(Δ) `` clipped to ``g·C`` in
sketch space plus ``N(0, (z·g·C)²)``. This module turns its :meth:`privacy_params` into ε with the same
accountant as DP-FedAvg (:class:`~simulator.dp.accounting.ClientLevelAccounting`), for two server views:

* ``epsilon`` — the server sees only the *sum* of the cohort's sketches (secure aggregation). Adding or removing
  one client moves the sum by at most ``g·C`` and the sum carries noise of std ``z·g·C·√n ≥ z·g·C``, so the
  Gaussian mechanism with multiplier ``z``, composed over rounds with the scenario's client subsampling, is a
  valid (conservative) bound — exactly DP-FedAvg's analysis.
* ``epsilon_single_sketch`` — the server reads each client's sketch in the clear. Replacing the client's data
  moves its own sketch by up to ``2·g·C``: multiplier ``z/2``, composed over every round so far, no subsampling
  amplification (the server knows who took part). This is the local-DP guarantee of one client.
"""

from __future__ import annotations

from typing import Any

from dp_accounting import dp_event as E

from simulator.dp.accounting import ClientLevelAccounting, epsilon_pld
from simulator.dp.mechanism import PrivacyMechanism, client_level_accounting

__all__ = ["SketchDP", "sketch_accounting"]


def sketch_accounting(scenario: Any, noise_multiplier: float) -> ClientLevelAccounting:
    """The accountant of the sum of noisy sketches under the scenario's client sampling: DP-FedAvg's, except
    that fixed-size cohorts fall back to RDP (PLD cannot analyse sampling without replacement)."""
    fixed = scenario.privacy.amplification and scenario.federation.sampling == "fixed"
    accountant = "rdp" if fixed and scenario.privacy.accountant == "pld" else None
    return client_level_accounting(scenario, noise_multiplier, accountant=accountant)


class SketchDP(PrivacyMechanism):
    """Reports ε for a compressor that noises each client's sketch; the noise itself is in the compressor."""

    def __init__(self, accounting: ClientLevelAccounting, clip_norm: float, compressor: str) -> None:
        self.acc, self.clip_norm, self.compressor = accounting, float(clip_norm), compressor
        self.rounds_done = 0

    def epsilon_single_sketch(self, rounds: int) -> float:
        return epsilon_pld(E.GaussianDpEvent(self.acc.noise_multiplier / 2.0), max(int(rounds), 1), self.acc.delta)

    def round_report(self, server_round: int, client_metrics: list[dict[str, float]]) -> dict[str, float]:
        self.rounds_done += 1
        out = {"epsilon": self.acc.epsilon(self.rounds_done), "delta": self.acc.delta,
               "epsilon_single_sketch": self.epsilon_single_sketch(self.rounds_done)}
        other = self.acc.cross_check
        if other is not None:
            out[f"epsilon_{other}"] = self.acc.epsilon(self.rounds_done, other)
        return out

    def summary(self) -> dict[str, Any]:
        extra = {
            "mechanism": f"Gaussian noise on each client's sketch ({self.compressor})",
            "clip_norm": self.clip_norm,
            "epsilon_is": "the noisy sum of the cohort's sketches (secure aggregation), with client subsampling",
            "epsilon_single_sketch": self.epsilon_single_sketch(self.rounds_done),
            "epsilon_single_sketch_is": ("one client's sketch seen in the clear in every round so far, replace-one "
                                         "(multiplier z/2), no amplification"),
        }
        return self.acc.privacy_block(rounds=self.rounds_done, level="client (sketch)", extra=extra)
