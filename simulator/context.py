"""Frozen contexts handed to plug-ins: what a client knows in a round, and what the server knows.

Neither holds ground truth about who is malicious: the evaluator alone keeps that.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from simulator.flat import Layout
from simulator.training import LocalTrainConfig

__all__ = [
    "ClientContext",
    "RoundContext",
    "derive_seed",
    "make_generator",
    "private_generator",
    "run_secret",
]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts; stable across processes and machines."""
    h = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def make_generator(*parts: Any) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


def run_secret(noise_seed: int | None) -> int:
    """The secret behind a process's privacy randomness (DP noise, secret sampling).

    ``privacy.noise_seed`` when the scenario sets one (reproducible, but anyone holding the scenario can
    regenerate the noise: for experiments only); otherwise fresh OS entropy, so no value the server or a
    plug-in knows (scenario seed, round, partition id) reproduces it.
    """
    return int(noise_seed) if noise_seed is not None else secrets.randbits(63)


def private_generator(key: int | None, *parts: Any) -> torch.Generator:
    """A generator derived from a secret ``key`` and ``parts``; fresh OS entropy when there is no key."""
    if key is None:
        return make_generator(secrets.randbits(63), *parts)
    return make_generator(key, *parts)


@dataclass(frozen=True)
class ClientContext:
    """One client's view of one round (built inside the ClientApp)."""

    partition_id: int
    server_round: int
    seed: int  # the scenario seed
    num_examples: int
    global_vector: torch.Tensor  # w_global, flat (see simulator.flat)
    layout: Layout
    train: LocalTrainConfig
    num_clients: int
    expected_clients_per_round: float
    malicious: bool = False  # the client's own role: an attacker knows it is one
    colluders: tuple[int, ...] = ()  # partition ids of the attackers this one colludes with (attackers only)
    state: dict[str, np.ndarray] = field(default_factory=dict)  # persists across rounds for this client
    # client-private, for client defenses that need them (Soteria): the received model before local
    # training and the client's own training data
    received_model: Any = None
    data: tuple[torch.Tensor, torch.Tensor] | None = None
    # the client's own secret for privacy randomness (never derived from public values; see run_secret)
    noise_key: int | None = field(default=None, repr=False)

    def generator(self, purpose: str) -> torch.Generator:
        """A reproducible generator for (scenario seed, round, client, purpose): for training randomness,
        never for privacy noise (the server knows every part of its seed)."""
        return make_generator(self.seed, self.server_round, self.partition_id, purpose)

    def private_generator(self, purpose: str) -> torch.Generator:
        """A generator for privacy noise and secret sampling, from the client's secret ``noise_key``."""
        return private_generator(self.noise_key, self.server_round, purpose)


@dataclass(frozen=True)
class RoundContext:
    """The server's view of one round's aggregation."""

    server_round: int
    seed: int
    global_vector: torch.Tensor
    layout: Layout
    client_ids: tuple[int, ...]  # partition ids of the accepted replies, row order of the update matrix
    num_examples: tuple[int, ...]
    num_clients: int
    expected_clients_per_round: float
    # the server's own update on its clean root set this round (FLTrust's g₀), filled by the round core when
    # the aggregator declares ``needs_root_update``; None otherwise
    root_update: torch.Tensor | None = None

    def generator(self, purpose: str) -> torch.Generator:
        return make_generator(self.seed, self.server_round, "server", purpose)
