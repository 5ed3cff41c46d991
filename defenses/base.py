"""Defense interfaces: aggregators (server, full list of updates), client and server defenses.

Each sees only what its side sees: aggregators get the round's update matrix, example counts
and client ids, never who is malicious.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

from simulator.context import ClientContext, RoundContext
from simulator.registry import Registry

__all__ = [
    "AGGREGATORS",
    "CLIENT_DEFENSES",
    "SERVER_DEFENSES",
    "AggregationResult",
    "Aggregator",
    "ClientDefense",
    "ServerDefense",
]


@dataclass(frozen=True)
class AggregationResult:
    """The aggregate update, which clients it used, and a per-client score (higher = more suspicious
    unless the aggregator documents otherwise)."""

    update: torch.Tensor  # (d,)
    accepted: tuple[int, ...]  # client ids (partition ids) whose updates entered the aggregate
    scores: dict[int, float] = field(default_factory=dict)


class Aggregator(ABC):
    """Step 10: combine the round's updates ``U ∈ ℝ^{n×d}`` into one update.

    ``needs_individual_updates``: the rule reads each client's update (distances, coordinate-wise statistics,
    per-client clipping); it cannot run behind secure aggregation, where the server holds only the sum. A rule
    that is a function of the weighted sum alone (FedAvg) sets it to False.

    ``needs_root_update``: the rule compares the clients' updates with the server's own update on a small
    clean root set it holds (FLTrust); the engine then draws ``root_size`` examples for that set and fills
    ``ctx.root_update`` every round (the server trains a copy of the global model on it with the clients'
    recipe). A rule without it never sees a root update.

    ``selects_clients``: the rule may leave clients out of the aggregate (Krum, FLAME, FoolsGold ...), so its
    ``accepted`` set is a detection decision and the detection rates (TPR / FPR) measure it. A rule that by
    construction accepts every client (FedAvg, median, trimmed mean, norm clipping ...) sets it to False: its
    rates would be 0 by definition, and reports show "n/a" for them instead."""

    needs_individual_updates: bool = True
    needs_root_update: bool = False
    selects_clients: bool = True
    root_size: int = 0  # examples of the server's root set (read only when needs_root_update)

    @abstractmethod
    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        """``updates`` rows follow ``ctx.client_ids``; ``weights`` are the example counts (float)."""


class ClientDefense(ABC):
    """Step 5: transform a client's flat update before it leaves the client.

    A defense may also inspect the model the client received, before it trains on it (:meth:`inspect`,
    the client-side model validation of the three-stage pipeline of Guo et al., TPAMI 2025): a non-empty
    answer makes the client refuse to train and send nothing.
    """

    #: the defense reads ``ctx.received_model`` and ``ctx.data`` (the client's own model copy and data)
    needs_client_data: bool = False

    def inspect(self, model: nn.Module, ctx: ClientContext) -> str | None:
        """Why the client should refuse ``model`` (None: accept); the default accepts every model."""
        return None

    @abstractmethod
    def apply(self, delta: torch.Tensor, ctx: ClientContext) -> torch.Tensor: ...


class ServerDefense(ABC):
    """Step 11: transform the aggregate update on the server."""

    @abstractmethod
    def apply(self, update: torch.Tensor, ctx: RoundContext) -> torch.Tensor: ...


AGGREGATORS: Registry[Aggregator] = Registry("aggregator")
CLIENT_DEFENSES: Registry[ClientDefense] = Registry("client defense")
SERVER_DEFENSES: Registry[ServerDefense] = Registry("server defense")
