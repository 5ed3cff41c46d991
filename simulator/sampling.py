"""Who is malicious, who acts when, and which clients each round samples.

Everything is a pure function of (scenario seed, round), so both engines, every Ray worker and
the evaluator agree without talking to each other. Flower's FedAvg samples with Python's global
``random``; privsim samples here instead, by partition id, from its own seeded streams.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from simulator.context import derive_seed
from simulator.scenario.attacks import AttackerPlan
from simulator.scenario.core import expected_cohort

__all__ = ["AttackerSchedule", "ClientSampler", "Cohort"]


@dataclass(frozen=True)
class AttackerSchedule:
    """The attacker plan resolved to partition ids and rounds."""

    malicious_ids: tuple[int, ...]
    plan: AttackerPlan
    seed: int
    rounds: int

    @classmethod
    def from_plan(
        cls, plan: AttackerPlan, *, num_clients: int, seed: int, rounds: int, active: bool
    ) -> AttackerSchedule:
        if not active:
            return cls((), plan, seed, rounds)
        if plan.malicious_ids is not None:
            bad = [i for i in plan.malicious_ids if not 0 <= i < num_clients]
            if bad:
                raise ValueError(f"attacks.plan.malicious_ids {bad} outside 0..{num_clients - 1}")
            ids = sorted(set(plan.malicious_ids))
        else:
            k = (
                plan.malicious
                if plan.malicious is not None
                else (
                    round((plan.malicious_fraction or 0.0) * num_clients)
                    if plan.malicious_fraction is not None
                    else 1
                )
            )
            k = min(k, num_clients)
            rng = np.random.default_rng(derive_seed(seed, "malicious"))
            ids = sorted(int(i) for i in rng.choice(num_clients, size=k, replace=False))
        return cls(tuple(ids), plan, seed, rounds)

    def acts_in(self, server_round: int) -> bool:
        p = self.plan
        if not self.malicious_ids:
            return False
        if p.rounds is not None:
            return server_round in p.rounds
        end = p.end_round or self.rounds
        return p.start_round <= server_round <= end and (server_round - p.start_round) % p.every == 0

    def acting(self, server_round: int) -> tuple[int, ...]:
        """Attackers that act in this round (a seeded subset when ``per_round`` is set)."""
        if not self.acts_in(server_round):
            return ()
        ids = self.malicious_ids
        if self.plan.per_round is not None and self.plan.per_round < len(ids):
            rng = np.random.default_rng(derive_seed(self.seed, "acting", server_round))
            ids = tuple(sorted(int(i) for i in rng.choice(ids, size=self.plan.per_round, replace=False)))
        return ids

    def colluders(self, pid: int, server_round: int) -> tuple[int, ...]:
        acting = self.acting(server_round)
        return acting if (self.plan.collude and pid in acting) else ((pid,) if pid in acting else ())

    def acting_rounds(self) -> list[int]:
        return [r for r in range(1, self.rounds + 1) if self.acts_in(r)]


@dataclass(frozen=True)
class Cohort:
    sampled: tuple[int, ...]  # partition ids sampled this round (sorted)
    dropped: tuple[int, ...]  # sampled but never answer (stragglers)
    malicious: tuple[int, ...]  # acting attackers among the sampled (ground truth, for the evaluator)

    @property
    def live(self) -> tuple[int, ...]:
        return tuple(p for p in self.sampled if p not in set(self.dropped))


@dataclass(frozen=True)
class ClientSampler:
    """Fixed-size (without replacement) or Poisson sampling of partition ids, seeded per round."""

    num_clients: int
    sampling: str  # "fixed" | "poisson"
    clients_per_round: int | None
    sampling_rate: float | None
    dropout: float
    seed: int
    schedule: AttackerSchedule
    #: round -> partition ids the server always samples in that round (a curious server's inversion targets)
    forced: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

    @property
    def expected_size(self) -> float:
        return expected_cohort(
            self.num_clients, clients_per_round=self.clients_per_round, sampling_rate=self.sampling_rate
        )

    def sample(self, server_round: int) -> Cohort:
        n = self.num_clients
        rng = np.random.default_rng(derive_seed(self.seed, "sample", server_round))
        if self.sampling == "poisson":
            q = self.sampling_rate if self.sampling_rate is not None else self.expected_size / n
            chosen = set(np.flatnonzero(rng.random(n) < q).tolist())
        else:
            m = round(self.expected_size)
            chosen = set(rng.choice(n, size=m, replace=False).tolist())
        acting = set(self.schedule.acting(server_round))
        must = (acting if self.schedule.plan.guarantee_sampled else set()) | set(
            self.forced.get(server_round, ())
        )
        if must - chosen:
            missing = sorted(must - chosen)
            if self.sampling == "fixed":
                benign = sorted(chosen - must)
                out: np.ndarray | list[int] = (
                    rng.choice(len(benign), size=min(len(missing), len(benign)), replace=False)
                    if benign
                    else []
                )
                chosen -= {benign[i] for i in out}
            chosen |= set(missing)
        sampled = tuple(sorted(int(i) for i in chosen))
        drop_rng = np.random.default_rng(derive_seed(self.seed, "dropout", server_round))
        dropped = tuple(p for p, u in zip(sampled, drop_rng.random(len(sampled))) if u < self.dropout)
        return Cohort(sampled, dropped, tuple(sorted(acting & set(sampled))))
