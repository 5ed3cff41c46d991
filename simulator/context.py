"""Frozen contexts handed to plug-ins: what a client knows in a round, and what the server knows.

Neither holds ground truth about who is malicious: the evaluator alone keeps that.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from simulator.flat import Layout
from simulator.training import LocalTrainConfig

__all__ = ["ClientContext", "RoundContext", "derive_seed", "make_generator"]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts; stable across processes and machines."""
    h = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def make_generator(*parts: Any) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


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

    def generator(self, purpose: str) -> torch.Generator:
        """A generator private to (scenario seed, round, client, purpose)."""
        return make_generator(self.seed, self.server_round, self.partition_id, purpose)


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

    def generator(self, purpose: str) -> torch.Generator:
        return make_generator(self.seed, self.server_round, "server", purpose)
