"""Accounting for DP on the sketch (Song, Wang, Yu, Zhang, ICML 2023):
the ε of a sketching compressor's noise.

A sketching compressor with ``clip_norm = C`` and ``noise_multiplier = z`` (see
:mod:`simulator.sketching.sketched`) releases, per sampled client and round, ``R·clip(Δ)`` clipped to ``g·C``
in sketch space plus ``N(0, (z·g·C)²)``. Every round appends to the run's
:class:`~simulator.dp.ledger.PrivacyLedger`:

* ``update_in_clear`` (the headline: this simulator has no secure aggregation, so the server reads each
  client's sketch) — replacing the client's data moves its own sketch by up to ``2·g·C``:
  ``GaussianDpEvent(z/2)`` for each round the client replied, replace-one, no amplification (the server knows
  who took part). This is the local-DP guarantee of one client, and it holds whatever the server does with the
  sketches (post-processing).
* ``aggregate`` — only when the aggregator sums the sketches (``fedavg``): the *sum* of the cohort's sketches
  as seen behind a secure aggregation. Adding or removing one client moves the sum by at most ``g·C`` and the
  sum carries noise of std ``z·g·C·√n ≥ z·g·C`` (n ≥ 1 replies), so the sampled Gaussian with multiplier ``z``
  (``z/2`` replace-one for fixed-size cohorts) is DP-FedAvg's analysis. It assumes the secure aggregation that
  the run does not simulate, so it is listed beside the headline, never instead of it. With a robust
  aggregator (Krum, median ...) the release is not a sum and the view is not offered.
"""

from __future__ import annotations

from typing import Any, Literal

from simulator.dp.accounting import ClientLevelAccounting, client_level_accounting
from simulator.dp.dpa import E
from simulator.dp.ledger import PrivacyLedger, gaussian, sampled
from simulator.dp.mechanism import PrivacyMechanism

__all__ = ["SketchDP", "sketch_accounting"]


def sketch_accounting(scenario: Any, noise_multiplier: float) -> ClientLevelAccounting:
    """The plan of the sum of noisy sketches under the scenario's client sampling: DP-FedAvg's, except that
    fixed-size cohorts use RDP (PLD cannot analyse sampling without replacement)."""
    fixed = scenario.privacy.amplification and scenario.federation.sampling == "fixed"
    accountant: Literal["pld", "rdp"] | None = (
        "rdp" if fixed and scenario.privacy.accountant == "pld" else None
    )
    return client_level_accounting(scenario, noise_multiplier, accountant=accountant)


class SketchDP(PrivacyMechanism):
    """Reports ε for a compressor that noises each client's sketch; the noise itself is in the compressor."""

    ledger: PrivacyLedger  # always present: this mechanism claims an ε

    secret_sampling = True

    def __init__(
        self,
        accounting: ClientLevelAccounting,
        clip_norm: float,
        compressor: str,
        *,
        sum_aggregator: bool = True,
        randomness: str = "fresh OS entropy",
    ) -> None:
        self.acc, self.clip_norm, self.compressor = accounting, float(clip_norm), compressor
        self.randomness = randomness
        self.rounds_done = 0
        self.ledger = PrivacyLedger(delta=accounting.delta)
        self.ledger.add_view(
            "update_in_clear",
            "each client's noisy sketch read by the server (local DP, "
            "replace-one: sensitivity 2·g·C; no amplification)",
            relation="replace_one",
            per_subject=True,
        )
        if sum_aggregator:
            self.ledger.add_view(
                "aggregate",
                "the sum of the cohort's noisy sketches: holds only behind a secure "
                "aggregation, which this run does not simulate",
                relation="replace_one" if accounting.sampling == "fixed" else "add_or_remove_one",
            )
        else:
            self.ledger.notes.append("no aggregate view: the aggregator is not a sum of the sketches")

    def round_report(self, server_round: int, client_metrics: list[dict[str, float]]) -> dict[str, float]:
        self.rounds_done += 1
        z = self.acc.noise_multiplier
        for m in client_metrics:
            self.ledger.record(
                "update_in_clear",
                gaussian(z / 2.0),
                round=server_round,
                subject=int(m.get("partition-id", -1)),
                what="noisy sketch in the clear",
            )
        if "aggregate" in self.ledger.views:
            a = self.acc
            if client_metrics:
                ev = sampled(
                    gaussian(z / 2.0 if a.sampling == "fixed" else z),
                    sampling=a.sampling,
                    rate=a.sampling_rate,
                    num_clients=a.num_clients,
                    sample_size=a.sample_size,
                )
            else:  # nothing released: no sketch, no sum
                ev = E.NoOpDpEvent()
            self.ledger.record("aggregate", ev, round=server_round, what="sum of noisy sketches")
        eps = self.ledger.epsilons()
        out: dict[str, float] = {"epsilon": max(eps.values()), "delta": self.acc.delta}
        out.update({f"epsilon_{k}": v for k, v in eps.items()})
        return out

    def summary(self) -> dict[str, Any]:
        view, eps = self.ledger.worst()
        return {
            "level": "client (sketch)",
            "mechanism": f"Gaussian noise on each client's sketch ({self.compressor})",
            "epsilon": eps,
            "epsilon_view": view,
            "epsilons": self.ledger.epsilons(),
            "delta": self.acc.delta,
            "noise_multiplier": self.acc.noise_multiplier,
            "clip_norm": self.clip_norm,
            "steps": self.rounds_done,
            "sampling_rate": self.acc.sampling_rate,
            "noise_randomness": self.randomness,
            "ledger": self.ledger.to_dict(),
        }
