"""Canary clients for a one-run client-level privacy audit (Andrew, Chien, Kairouz, Oh, Oprea, McMahan,
Suriyakumar, "One-shot Empirical Privacy Estimation for Federated Learning", ICLR 2024).

Each of ``n`` canary clients owns a fixed random direction ``u_j`` (isotropic: a normalised Gaussian vector);
it is *inserted* into the population with probability ½ (a coin the evaluator keeps), and an inserted canary
takes part in each round like a real client, with probability ``q``, sending the update ``C·u_j`` (norm
exactly the clip norm, so clipping leaves it unchanged). After the run every canary gets a score, and the
in/out scores feed :mod:`simulator.audit.estimators`:

* all-iterates threat: ``max_t cos(u_j, Δ_t)`` over the released aggregates ``Δ_t`` (the paper's statistic),
  and, when the auditor knows the mechanism (noise std ``σ_t`` on the sum, canary norm ``C``, participation
  rate ``q``), the log-likelihood ratio of Poisson participation, ``Σ_t log(1 − q + q·exp(a·s_t − a²/2))``
  with ``s_t = ⟨u_j, S_t⟩/σ_t`` for the released noisy sum ``S_t`` and ``a = C/σ_t`` (the Neyman-Pearson test
  of "inserted" for a subsampled Gaussian; stronger than the max when a canary takes part in several rounds);
* final-model threat: ``cos(u_j, w_T − w_0)``.

Canaries that were never inserted give the null distribution (``cos ≈ N(0, 1/d)`` in dimension ``d``).

>>> c = CanaryClients(num=8, dim=1000, rate=1.0, seed=0)
>>> ids, ups = c.round_updates(1, norm=2.0)
>>> bool(abs(float(ups[0].norm()) - 2.0) < 1e-4), len(ids) == int(c.inserted.sum())
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from simulator.context import derive_seed, make_generator

__all__ = ["CanaryClients"]


@dataclass
class CanaryClients:
    """The canaries of one run (evaluator side: the coins never reach the server's plug-ins)."""

    num: int
    dim: int
    rate: float  # per-round participation probability of an inserted canary (the clients' q)
    seed: int
    directions: torch.Tensor = field(init=False, repr=False)  # (num, dim) unit rows, float32
    inserted: np.ndarray = field(init=False)  # (num,) bool: the coins
    max_cos: torch.Tensor = field(init=False, repr=False)
    llr: torch.Tensor = field(init=False, repr=False)
    known_noise: bool = field(init=False, default=True)
    participations: np.ndarray = field(init=False)
    rounds: int = 0

    def __post_init__(self) -> None:
        g = make_generator(self.seed, "audit", "directions")
        d = torch.randn(self.num, self.dim, generator=g)
        self.directions = d / d.norm(dim=1, keepdim=True)
        rng = np.random.default_rng(derive_seed(self.seed, "audit", "coins"))
        self.inserted = rng.random(self.num) < 0.5
        self.max_cos = torch.full((self.num,), -2.0, dtype=torch.float64)
        self.llr = torch.zeros(self.num, dtype=torch.float64)
        self.participations = np.zeros(self.num, dtype=np.int64)

    def round_updates(self, server_round: int, *, norm: float) -> tuple[np.ndarray, torch.Tensor]:
        """The inserted canaries that take part in ``server_round`` and their updates ``norm·u_j``."""
        rng = np.random.default_rng(derive_seed(self.seed, "audit", "round", server_round))
        take = np.flatnonzero(self.inserted & (rng.random(self.num) < self.rate))
        self.participations[take] += 1
        return take, self.directions[torch.as_tensor(take, dtype=torch.long)] * float(norm)

    def observe(
        self,
        released: torch.Tensor,
        *,
        noisy_sum: torch.Tensor | None = None,
        noise_std: float = 0.0,
        norm: float = 0.0,
    ) -> None:
        """Score every canary against one released aggregate (all-iterates threat); with the noisy sum, its
        noise std and the canaries' norm this round, also accumulate the likelihood-ratio statistic."""
        cos = self.cosines(released)
        self.max_cos = torch.maximum(self.max_cos, cos)
        self.rounds += 1
        if noisy_sum is None or noise_std <= 0 or norm <= 0:
            self.known_noise = False
            return
        s = (self.directions @ noisy_sum.detach().reshape(-1).to(torch.float32).cpu()).to(
            torch.float64
        ) / noise_std
        a = norm / noise_std
        q = min(max(self.rate, 1e-12), 1.0)
        # log(1 − q + q·e^{a·s − a²/2}), stably
        x = a * s - a * a / 2 + np.log(q)
        self.llr += torch.logaddexp(torch.full_like(x, float(np.log1p(-q)) if q < 1 else -np.inf), x)

    def cosines(self, v: torch.Tensor) -> torch.Tensor:
        v = v.detach().reshape(-1).to(torch.float32).cpu()
        n = float(v.norm())
        if n == 0 or not np.isfinite(n):
            return torch.zeros(self.num, dtype=torch.float64)
        return (self.directions @ (v / n)).to(torch.float64)

    def scores(self, final_delta: torch.Tensor | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per statistic, the (inserted, not inserted) scores."""
        out = {"all_iterates_max": self.max_cos.numpy()}
        if self.known_noise and self.rounds:
            out["all_iterates_likelihood"] = self.llr.numpy()
        if final_delta is not None:
            out["final_model"] = self.cosines(final_delta).numpy()
        return {k: (v[self.inserted], v[~self.inserted]) for k, v in out.items()}
