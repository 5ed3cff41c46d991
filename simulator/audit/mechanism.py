"""Audit DP-FedAvg's server mechanism on its own: the canary experiment of Andrew et al. (ICLR 2024, Sec. 5's
synthetic setting) without local training, so a power table over noise multipliers and seeds takes seconds.

Real clients are replaced by updates of norm ``C`` in fresh random directions (the cohort's own contribution
to each release, uncorrelated with the canaries), the canaries go through the very :class:`ClientLevelDP` a
run uses (clipping bound, Poisson sampling, central noise, the ledger), and the released averages are scored.
The same loop audits a deliberately broken mechanism (``noise_scale < 1``: less noise than the ledger
accounts), which the audit must catch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from simulator.audit.canaries import CanaryClients
from simulator.audit.report import audit_block
from simulator.context import RoundContext, derive_seed, make_generator
from simulator.dp.accounting import ClientLevelAccounting
from simulator.dp.client_level import noisy_sum_average
from simulator.dp.mechanism import ClientLevelDP
from simulator.flat import Layout
from simulator.scenario.privacy import ClientDPConfig

__all__ = ["MechanismAudit", "audit_dp_fedavg"]


class _BrokenDP(ClientLevelDP):
    """A deliberately broken DP-FedAvg: adds ``noise_scale`` × the noise while its ledger accounts all of
    it."""

    def __init__(self, *args: Any, noise_scale: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.noise_scale = noise_scale

    def server_aggregate(
        self, update: torch.Tensor, client_metrics: list[dict[str, float]], ctx: RoundContext
    ) -> torch.Tensor:
        n = len(client_metrics)
        out = noisy_sum_average(
            update,
            num_received=n,
            noise_std=self.noise_std_on_sum(n) * self.noise_scale,
            expected_clients=self.m,
            generator=self._generator(ctx.server_round, "dp"),
        )
        self._record_round(ctx.server_round, ctx.client_ids, self.total_noise_std(n), self.clip_norm)
        return out


@dataclass(frozen=True)
class MechanismAudit:
    epsilon_upper: float
    block: dict[str, Any]


def audit_dp_fedavg(
    *,
    noise_multiplier: float,
    rounds: int = 20,
    sampling_rate: float = 0.25,
    num_clients: int = 200,
    canaries: int = 1000,
    dim: int = 25_450,
    clip_norm: float = 1.0,
    delta: float = 1e-5,
    confidence: float = 0.95,
    seed: int = 0,
    noise_scale: float = 1.0,
) -> MechanismAudit:
    """Run ``rounds`` of DP-FedAvg's release with canary clients and audit it.

    ``noise_scale`` multiplies the noise actually added while the ledger still accounts the full noise (1.0: a
    correct mechanism; 0.25: the broken one of the issue's test).
    """
    m = sampling_rate * num_clients
    plan = ClientLevelAccounting(
        noise_multiplier=noise_multiplier,
        sampling="poisson",
        sampling_rate=sampling_rate,
        num_clients=num_clients,
        sample_size=round(m),
        delta=delta,
    )
    mech = ClientLevelDP(
        ClientDPConfig(clip_norm=clip_norm, noise_multiplier=noise_multiplier),
        plan,
        expected_clients=m,
        secret=derive_seed(seed, "audit-noise"),
    )
    if noise_scale != 1.0:
        mech = _BrokenDP(
            ClientDPConfig(clip_norm=clip_norm, noise_multiplier=noise_multiplier),
            plan,
            expected_clients=m,
            secret=derive_seed(seed, "audit-noise"),
            noise_scale=noise_scale,
        )
    canary = CanaryClients(num=canaries, dim=dim, rate=sampling_rate, seed=seed)
    rng = np.random.default_rng(derive_seed(seed, "audit-cohort"))
    layout = Layout(("w",), ((dim,),))
    total = torch.zeros(dim)
    for rnd in range(1, rounds + 1):
        n_real = int(rng.binomial(num_clients, sampling_rate))
        g = make_generator(seed, "audit-real", rnd)
        real = torch.randn(n_real, dim, generator=g)
        real = real / real.norm(dim=1, keepdim=True) * clip_norm
        _, ups = canary.round_updates(rnd, norm=clip_norm)
        rows = torch.cat([real, ups]) if len(ups) else real
        n = int(rows.shape[0])
        mean = rows.mean(0) if n else torch.zeros(dim)
        ctx = RoundContext(
            server_round=rnd,
            seed=seed,
            global_vector=torch.zeros(dim),
            layout=layout,
            client_ids=tuple(range(n)),
            num_examples=(1,) * n,
            num_clients=num_clients,
            expected_clients_per_round=m,
        )
        released = mech.server_aggregate(mean, [{}] * n, ctx)
        # the auditor knows the mechanism as documented: the noise std the ledger accounts, the canary norm, q
        canary.observe(released, noisy_sum=released * m, noise_std=mech.total_noise_std(n), norm=clip_norm)
        total += released
    eps = mech.ledger.epsilon("aggregate")
    block = audit_block(
        canary.scores(total),
        delta=delta,
        confidence=confidence,
        epsilon_upper=eps,
        method="canary clients (Andrew et al. 2024), mechanism only",
        canaries=canaries,
        extra={
            "noise_multiplier": noise_multiplier,
            "noise_scale": noise_scale,
            "rounds": rounds,
            "sampling_rate": sampling_rate,
        },
    )
    return MechanismAudit(eps, block)
