"""privsim attacks: backdoors (client side) and gradient inversion (server side)."""

from attacks import backdoor, inversion, poisoning  # noqa: F401
from attacks.base import (
    CLIENT_ATTACKS,
    INVERSION_ATTACKS,
    ClientAttack,
    InversionAttack,
    Reconstruction,
    ServerView,
)

__all__ = [
    "CLIENT_ATTACKS",
    "INVERSION_ATTACKS",
    "ClientAttack",
    "InversionAttack",
    "Reconstruction",
    "ServerView",
]
