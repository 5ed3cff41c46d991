"""The round core: DESIGN.md's numbered round as pure, typed functions that every engine calls.

:func:`client_step` (steps 1-6), :func:`validate_replies` (step 7) and :func:`server_step` (steps 8-12,
with the poisoning stage of ``[attacks.poisoning]`` and the adaptation stage of a defense-aware backdoor after
8). The Flower ClientApp and strategy are thin adapters around them; the leakage experiment and the warm start
call them too.
"""

from simulator.round.client_step import (
    ClientPlugins,
    ClientReply,
    ModelRefused,
    client_step,
    defend_update,
    inspect_model,
)
from simulator.round.deadline import apply_deadline
from simulator.round.server_step import (
    Adapted,
    Adapter,
    Observer,
    Poisoned,
    Poisoner,
    RootUpdate,
    RoundOutcome,
    ServerPlugins,
    decode_updates,
    round_weights,
    server_step,
)
from simulator.round.validate import Candidate, ValidReply, Verdicts, validate_replies

__all__ = [
    "Adapted",
    "Adapter",
    "Candidate",
    "ClientPlugins",
    "ClientReply",
    "ModelRefused",
    "Observer",
    "Poisoned",
    "Poisoner",
    "RootUpdate",
    "RoundOutcome",
    "ServerPlugins",
    "ValidReply",
    "Verdicts",
    "apply_deadline",
    "client_step",
    "decode_updates",
    "defend_update",
    "inspect_model",
    "round_weights",
    "server_step",
    "validate_replies",
]
