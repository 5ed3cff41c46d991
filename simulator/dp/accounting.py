"""User-level privacy accounting for DP-FedAvg with Google's ``dp_accounting``.

One DP-FedAvg round (McMahan et al., "Learning Differentially Private Recurrent Language Models",
ICLR 2018) releases ``Σ_i clip(Δ_i, C) + N(0, (zC)²I)`` over a sampled cohort, so each round is one
sampled Gaussian event and ``T`` rounds compose ``T`` of them:

* Poisson client sampling with rate ``q`` → ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``,
  add-or-remove-one neighbouring; reported with the PLD accountant (Koskela et al. 2020; Doroshenko et al.,
  "Connect the Dots", PETS 2022), with RDP (Mironov 2017; Mironov, Talwar, Zhang 2019) as a cross-check.
* Fixed-size cohorts drawn without replacement →
  ``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z/2))`` under replace-one neighbouring (Wang,
  Balle, Kasiviswanathan, AISTATS 2019): replacing a client moves the sum by up to ``2C`` and dp-accounting's
  multiplier is noise std / sensitivity. dp-accounting's PLD accountant does not support this event, so it is
  analysed with RDP only.
* No amplification → ``GaussianDpEvent(z)`` per round (the client is assumed to take part in every round).

:func:`privacy_block` writes every parameter needed to recompute ε from summary.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from simulator.dp.dpa import E, pld, privacy_accountant, rdp

if TYPE_CHECKING:
    from dp_accounting.privacy_accountant import NeighboringRelation

__all__ = [
    "ClientLevelAccounting",
    "calibrate_noise_multiplier",
    "client_level_accounting",
    "epsilon_pld",
    "epsilon_rdp",
]

Sampling = Literal["poisson", "fixed", "none"]

#: PLD discretisation: dp-accounting's default; coarser values give larger (still valid) ε.
PLD_INTERVAL = 1e-4


def epsilon_pld(event: E.DpEvent, count: int, delta: float, *, interval: float = PLD_INTERVAL) -> float:
    """ε(δ) of ``count`` self-compositions of ``event`` (PLD, add-or-remove-one)."""
    if count <= 0:
        return 0.0
    acc = pld.PLDAccountant(
        privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=interval
    )
    acc.compose(event, count)
    return float(acc.get_epsilon(delta))


def epsilon_rdp(
    event: E.DpEvent,
    count: int,
    delta: float,
    *,
    relation: NeighboringRelation | None = None,
) -> float:
    """ε(δ) of ``count`` self-compositions of ``event`` (RDP; ``relation`` defaults to add-or-remove-one)."""
    if count <= 0:
        return 0.0
    rel = relation if relation is not None else privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE
    acc = rdp.RdpAccountant(neighboring_relation=rel)
    acc.compose(event, count)
    return float(acc.get_epsilon(delta))


@dataclass
class ClientLevelAccounting:
    """User-level ε of DP-FedAvg after ``t`` rounds, memoised per ``t``.

    Parameters
    ----------
    noise_multiplier:
        ``z``: the std of the noise on the *sum* of clipped updates is ``z·C``.
    sampling:
        ``"poisson"`` (rate ``q``), ``"fixed"`` (``m`` of ``N`` without replacement) or ``"none"``.
    sampling_rate:
        ``q`` (Poisson) or ``m/N`` (fixed; informational).
    num_clients, sample_size:
        ``N`` and ``m`` for fixed-size sampling.
    delta:
        Target δ.
    accountant:
        ``"pld"`` or ``"rdp"``: the reported one. ``"pld"`` is refused for fixed-size sampling.
    """

    noise_multiplier: float
    sampling: Sampling
    sampling_rate: float
    num_clients: int
    sample_size: int
    delta: float
    accountant: Literal["pld", "rdp"] = "pld"
    _cache: dict[tuple[str, int], float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.sampling == "fixed" and self.accountant == "pld":
            raise ValueError(
                "dp-accounting's PLD accountant cannot analyse fixed-size sampling without "
                "replacement; use accountant='rdp' (replace-one) or Poisson sampling"
            )

    @property
    def neighboring_relation(self) -> NeighboringRelation:
        relation = privacy_accountant.NeighboringRelation
        return relation.REPLACE_ONE if self.sampling == "fixed" else relation.ADD_OR_REMOVE_ONE

    def event(self) -> E.DpEvent:
        """The DP event of one round."""
        g = E.GaussianDpEvent(self.noise_multiplier)
        if self.sampling == "poisson":
            return E.PoissonSampledDpEvent(self.sampling_rate, g)
        if self.sampling == "fixed":  # replace-one: sensitivity 2C
            return E.SampledWithoutReplacementDpEvent(
                self.num_clients, self.sample_size, E.GaussianDpEvent(self.noise_multiplier / 2.0)
            )
        return g

    def epsilon(self, rounds: int, accountant: str | None = None) -> float:
        """ε(δ) after ``rounds`` rounds with ``accountant`` (default: the reported one)."""
        acc = accountant or self.accountant
        key = (acc, int(rounds))
        if key not in self._cache:
            if acc == "pld":
                self._cache[key] = epsilon_pld(self.event(), rounds, self.delta)
            else:
                self._cache[key] = epsilon_rdp(
                    self.event(), rounds, self.delta, relation=self.neighboring_relation
                )
        return self._cache[key]

    @property
    def cross_check(self) -> str | None:
        """The other accountant, when it can analyse this sampling scheme."""
        if self.accountant == "pld":
            return "rdp"
        return "pld" if self.sampling != "fixed" else None

    def privacy_block(
        self, *, rounds: int, level: str, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The ``privacy`` block of summary.json: ε and everything needed to recompute it."""
        block: dict[str, Any] = {
            "level": level,
            "epsilon": self.epsilon(rounds),
            "delta": self.delta,
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "steps": int(rounds),
            "sampling": {
                "poisson": "poisson",
                "fixed": "fixed-size without replacement",
                "none": "none (no amplification)",
            }[self.sampling],
            "neighboring_relation": self.neighboring_relation.name.lower(),
        }
        if self.sampling == "fixed":
            block.update(num_clients=self.num_clients, sample_size=self.sample_size)
        other = self.cross_check
        if other is not None:
            block[f"epsilon_{other}"] = self.epsilon(rounds, other)
        if extra:
            block.update(extra)
        return block


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    rounds: int,
    make: Any,
    tol: float = 0.01,
    z_low: float = 0.05,
    z_high: float = 200.0,
) -> float:
    """The smallest ``z`` (to ``tol`` relative ε) whose ε after ``rounds`` is at most ``target_epsilon``.

    ε is decreasing in ``z``. A cheap RDP bisection first brackets the answer (RDP's ε is an upper bound on
    PLD's, so the RDP-calibrated ``z`` already meets the target); then the bracket is narrowed with the
    reported accountant, by false position on ``(log z, log ε)`` with a bisection safeguard.

    Parameters
    ----------
    target_epsilon:
        The budget.
    rounds:
        Number of composed rounds ``T``.
    make:
        ``make(z)``: an object with ``epsilon(rounds[, accountant])`` (e.g. a :class:`ClientLevelAccounting`).
    tol:
        Stop when ``target·(1 − tol) ≤ ε(z) ≤ target``.

    Returns
    -------
    float
        A ``z`` with ``ε(z) ≤ target_epsilon`` (never above the target).
    """

    def eps(z: float, accountant: str | None = None) -> float:
        a = make(z)
        return a.epsilon(rounds) if accountant is None else a.epsilon(rounds, accountant)

    def bisect(f: Any, lo: float, hi: float, f_lo: float, f_hi: float, steps: int) -> tuple[float, float]:
        # invariant: f(lo) > target >= f(hi)
        for k in range(steps):
            if f_hi >= target_epsilon * (1 - tol) or hi / lo < 1 + 1e-9:
                break
            a, b = math.log(f_lo), math.log(max(f_hi, 1e-300))
            t = (a - math.log(target_epsilon)) / (a - b) if a != b else 0.5
            t = min(max(t, 0.1), 0.9) if k % 3 != 2 else 0.5  # every third step a plain bisection
            mid = math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))
            e = f(mid)
            if e > target_epsilon:
                lo, f_lo = mid, e
            else:
                hi, f_hi = mid, e
        return lo, hi

    reported = getattr(make(1.0), "accountant", None)
    use_rdp = reported == "pld" and getattr(make(1.0), "cross_check", None) == "rdp"
    lo, hi = z_low, z_high
    if use_rdp:  # bracket with RDP (fast, an upper bound on the PLD ε)
        f_rdp = lambda z: eps(z, "rdp")  # noqa: E731
        e_hi = f_rdp(hi)
        if e_hi > target_epsilon:
            raise ValueError(
                f"target ε={target_epsilon} is not reachable in {rounds} rounds even with z={z_high}"
            )
        e_lo = f_rdp(lo)
        if e_lo <= target_epsilon:
            return lo
        _, hi = bisect(f_rdp, lo, hi, e_lo, e_hi, 200)
        lo = hi / 1.5
        while eps(lo) <= target_epsilon and lo > z_low:
            hi, lo = lo, max(lo / 1.5, z_low)
        if eps(lo) <= target_epsilon:
            return lo
    else:
        if eps(hi) > target_epsilon:
            raise ValueError(
                f"target ε={target_epsilon} is not reachable in {rounds} rounds even with z={z_high}"
            )
        if eps(lo) <= target_epsilon:
            return lo
    _, hi = bisect(eps, lo, hi, eps(lo), eps(hi), 60)
    return hi


def client_level_accounting(
    scenario: Any, noise_multiplier: float | None = None, *, accountant: Literal["pld", "rdp"] | None = None
) -> ClientLevelAccounting:
    """The plan of the aggregate view (the scenario's sampling and ``z``): used to calibrate ``z`` and to
    check a budget at load time; a run's ε comes from its ledger. ``accountant`` overrides
    ``privacy.accountant``."""
    p, f, n = scenario.privacy, scenario.federation, scenario.data.num_clients
    m = scenario.num_sampled_expected
    z = p.client.noise_multiplier if noise_multiplier is None else noise_multiplier
    sampling: Sampling = f.sampling if p.amplification else "none"
    return ClientLevelAccounting(
        noise_multiplier=z,
        sampling=sampling,
        sampling_rate=m / n,
        num_clients=n,
        sample_size=round(m),
        delta=p.delta,
        accountant=accountant or p.accountant,
    )
