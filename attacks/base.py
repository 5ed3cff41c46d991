"""Threat-model types: what an attacker controls and what it may see.

* A :class:`ClientAttack` (backdoors) controls only its own clients: their data, their training
  and their update. It also supplies the evaluator with its backdoor test set.
* An :class:`InversionAttack` receives a :class:`ServerView` and nothing else: the global model,
  the payload the server received, and public protocol facts. Never the client's data, labels or
  indices; the evaluator holds those.
* A :class:`PoisoningAttack` (untargeted model poisoning) is a coalition of colluding malicious clients that
  replaces its updates with crafted ones, knowing the round's benign updates (``"omniscient"``) or only its
  own honest updates (``"partial"``). The round core runs it on the server side as a simulation device (see
  :mod:`attacks.poisoning.plugins`); the server's aggregator and defenses see only the resulting updates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from simulator.context import ClientContext
from simulator.registry import Registry
from simulator.training import TrainHooks

__all__ = [
    "CLIENT_ATTACKS",
    "INVERSION_ATTACKS",
    "POISONING_ATTACKS",
    "Adaptation",
    "ClientAttack",
    "DefenseAware",
    "InversionAttack",
    "Knowledge",
    "PoisoningAttack",
    "Probe",
    "ProtocolInfo",
    "PublicData",
    "Reconstruction",
    "ServerView",
    "SketchInfo",
    "Verdict",
    "defense_aware",
]


class ClientAttack:
    """A malicious client's behaviour; every hook defaults to benign behaviour."""

    #: the label a backdoored input should be classified as (None: untargeted)
    target_label: int | None = None

    def reserve(self, train: Any) -> Any:
        """Indices of the training pool (an ``ArrayDataset``) that no client may hold, e.g. an
        edge-case attacker's private set; None for none. Called once when the data is built."""
        return None

    def poison(
        self, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attacker's training set for this round (step 1 of the round)."""
        return x, y

    def hooks(self, ctx: ClientContext) -> TrainHooks | None:
        """Hooks into local training (step 2)."""
        return None

    def transform(self, delta: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        """Edit the update Δ = w_local − w_global before client defenses (step 4)."""
        return delta

    def backdoor_testset(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Evaluation set of backdoored inputs and the labels the attacker wants, or None."""
        return None


@dataclass(frozen=True)
class ProtocolInfo:
    """Public facts of the client protocol that the server sets (and so knows)."""

    kind: str  # "gradient" (FedSGD) or "update" (FedAvg: k local steps)
    lr: float | None = None
    local_steps: int | None = None
    local_epochs: int | None = None
    batch_size: int | None = None
    num_examples: int | None = None  # reported by the client in its metrics (an aggregate: the cohort's sum)
    #: clients whose payloads the server's payload sums (1: one client's own payload)
    num_clients: int = 1
    #: how the payload was aggregated: "none" (one client's payload), "mean" (the example-weighted mean of
    #: ``num_clients`` payloads, seen in the clear), "secagg" (the same mean out of secure aggregation)
    aggregate: str = "none"

    @property
    def total_steps(self) -> int | None:
        """Local SGD steps behind an ``"update"`` payload:
        ``local_epochs · ⌈num_examples / batch_size⌉`` (``local_steps`` caps it), when known; 1 for a
        gradient."""
        if self.kind == "gradient":
            return 1
        full = None
        if self.local_epochs is not None and self.num_examples is not None and self.batch_size is not None:
            full = self.local_epochs * -(-self.num_examples // self.batch_size)
        if self.local_steps is not None:
            return self.local_steps if full is None else min(self.local_steps, full)
        return full


@dataclass(frozen=True)
class SketchInfo:
    """What the server knows about the sketch the payload went through."""

    operator: str  # the compressor's registry name (gaussian_sketch, srht, count_sketch)
    seed: int  # the scenario seed the round's operator is derived from
    sketch_dim: int
    params: dict[str, Any] = field(default_factory=dict)  # the compressor's params
    server_round: int = 1
    dim: int = 0  # d, the length of the de-sketched update


@dataclass(frozen=True)
class ServerView:
    """Everything an honest-but-curious (or malicious) server sees of one client update."""

    model: nn.Module  # the global model the client received (a private copy)
    payload: torch.Tensor  # flat gradient / update as decoded by the server, or the raw sketch
    protocol: ProtocolInfo
    input_shape: tuple[int, ...]  # (C, H, W)
    num_classes: int
    sketch: SketchInfo | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the client's reported metrics


@dataclass(frozen=True)
class Reconstruction:
    """An attack's output: images in [0, 1] (B, C, H, W), labels if recovered, per-restart losses."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    losses: tuple[float, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PublicData:
    """Data the attacker holds before the attack: a split disjoint from every victim's data (the held-out
    images of a leakage experiment, the server's test split in a federated run). Generative priors are
    trained on it; a malicious server calibrates its imprint bins on it."""

    x: torch.Tensor  # (N, C, H, W) in [0, 1]
    y: torch.Tensor  # (N,)
    source: str = ""  # where it came from, for the summary


class InversionAttack(ABC):
    """Rebuild a client's inputs from a :class:`ServerView` alone.

    Optional attacker-side set-up happens in :meth:`prepare`, before any client update exists, with public
    data only. A malicious-server attack (``malicious_server = True``) also changes the model the server
    sends (:meth:`server_model`); scenarios must mark the server malicious to use one.
    """

    #: the attack changes the model the server sends (Fowl et al., ICLR 2022); needs a malicious server
    malicious_server: bool = False
    #: the attack needs :class:`PublicData` in :meth:`prepare` (a generative prior, bin calibration)
    needs_public_data: bool = False
    #: the attack wants the raw sketch (``ServerView.sketch`` set) instead of the de-sketched update
    wants_sketch: bool = False
    #: the attack works on the device of the view's model (a GPU when ``simulation.device = "cuda"``)
    runs_on_device: bool = False
    #: the attack is meaningful on the aggregate of several clients' payloads (``ProtocolInfo.num_clients``)
    works_on_aggregate: bool = False

    def prepare(  # noqa: B027 -- optional hook: most attacks need no set-up, so not abstract
        self, public: PublicData | None, *, model: nn.Module, input_shape: tuple[int, ...], num_classes: int
    ) -> None:
        """Attacker-side set-up with public data only (train a prior, calibrate bins); default none."""

    def server_model(self, model: nn.Module) -> nn.Module:
        """The model the server sends to its victim; the honest-but-curious default sends ``model``."""
        return model

    @abstractmethod
    def reconstruct(self, view: ServerView) -> Reconstruction: ...


#: what colluding attackers know when they craft: every benign update of the round, or their own honest ones
Knowledge = Literal["omniscient", "partial"]


class PoisoningAttack(ABC):
    """Untargeted model poisoning by colluding malicious clients: their ``f`` updates of a round are replaced
    by crafted ones.

    :meth:`craft` receives ``benign``, the ``(n_b, d)`` updates of the round's benign clients, and ``own``,
    the ``(f, d)`` honest updates the ``f`` acting attackers computed themselves; it uses ``benign`` when
    ``knowledge = "omniscient"`` (full knowledge: the attackers know, or can compute, the benign updates)
    and only ``own`` when ``knowledge = "partial"`` (the attackers know their own data and updates alone;
    Fang et al., USENIX Security 2020, "partial knowledge"; Shejwalkar & Houmansadr, NDSS 2021, "unknown
    benign gradients"). It returns the ``(f, d)`` malicious updates, row ``i`` for the attacker of row ``i``
    of ``own``.
    """

    def __init__(self, knowledge: Knowledge = "omniscient") -> None:
        if knowledge not in ("omniscient", "partial"):
            raise ValueError(f"knowledge must be 'omniscient' or 'partial', got {knowledge!r}")
        self.knowledge: Knowledge = knowledge

    @property
    def min_known(self) -> int:
        """The fewest known updates (rows of :meth:`known`) :meth:`craft` needs (2 for a standard
        deviation)."""
        return 1

    @property
    def target_aggregator(self) -> tuple[str, dict[str, Any]] | None:
        """``(name, params)`` of the aggregator whose rule ``agr`` must simulate (an AGR-tailored attack that
        names one); None: the server's own aggregator."""
        return None

    def known(self, benign: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """The updates the attackers know: ``benign`` (omniscient) or ``own`` (partial)."""
        return benign if self.knowledge == "omniscient" else own

    @abstractmethod
    def craft(
        self,
        benign: torch.Tensor,
        own: torch.Tensor,
        *,
        num_malicious: int,
        generator: torch.Generator,
        agr: Callable[[torch.Tensor], torch.Tensor],
        global_vector: torch.Tensor,
    ) -> torch.Tensor:
        """The ``(num_malicious, d)`` malicious updates.

        ``agr(updates) -> (d,)`` runs the targeted aggregation rule on an ``(m, d)`` update matrix (rows
        ``0 … num_malicious − 1`` malicious) without touching the server's state; ``global_vector`` is the
        model ``w_global`` the round started from; ``generator`` is the attack's seeded randomness."""


@dataclass(frozen=True)
class Verdict:
    """What the rule a defense-aware attack adapts to did with the acting attackers' candidate rows, in the
    attackers' simulation of the round: per row (the order of ``own``), whether it entered the aggregate and
    the rule's score for it (the rule's own semantics, e.g. ``‖Δ‖ / M`` for norm clipping)."""

    accepted: tuple[bool, ...]
    scores: tuple[float, ...]


#: ``probe(rows) -> Verdict``: the rule run on the round's update matrix with the acting attackers' rows
#: replaced by ``rows`` (``(f, d)``), on a copy of the rule (the server's state never changes)
Probe = Callable[[torch.Tensor], Verdict]


@dataclass(frozen=True)
class Adaptation:
    """A defense-aware attack's answer: the ``(f, d)`` rows the attackers send, the share ``mix`` of their own
    (backdoor) update kept in them (1: unchanged; 0: the benign mean), and whether the rows pass the rule's
    test in the attackers' simulation (False: nothing they tried passed)."""

    updates: torch.Tensor
    mix: float = 1.0
    passes: bool = True


class DefenseAware(ABC):
    """A client attack whose acting attackers, knowing the round's benign updates, reshape their updates to
    pass an aggregation rule's acceptance test (an adaptive, omniscient attacker).

    The attackers train their backdoor through the normal client step; the round core then runs
    :meth:`adapt` on the server side, after decoding, as a simulation device (as for a
    :class:`PoisoningAttack`): ``benign`` are the ``(n_b, d)`` benign updates of the round, ``own`` the
    ``(f, d)`` updates the acting attackers computed; the returned rows replace theirs before the server's
    plug-ins see the matrix. ``rule`` is the registry name of the rule adapted to; ``probe`` runs it."""

    @property
    def target_aggregator(self) -> tuple[str, dict[str, Any] | None] | None:
        """``(name, params)`` of the rule the attackers adapt to; None: the server's own aggregator (its
        params and its state). ``params`` None: the server's own instance when it runs that rule (attackers
        who know the defense's params), else the rule's defaults."""
        return None

    @abstractmethod
    def adapt(self, benign: torch.Tensor, own: torch.Tensor, *, rule: str, probe: Probe) -> Adaptation:
        """The rows the acting attackers send (row ``i`` for the attacker of row ``i`` of ``own``)."""


def defense_aware(attack: ClientAttack | None) -> DefenseAware | None:
    """The defense-aware attack in a chain of wrappers (``attack``, ``attack.base``, ...), or None. Wherever
    it sits in the chain, its adaptation is the last edit of the update (it runs on the server side)."""
    for _ in range(64):  # wrappers nest a few levels at most
        if attack is None:
            return None
        if isinstance(attack, DefenseAware):
            return attack
        nxt = getattr(attack, "base", None)
        attack = nxt if isinstance(nxt, ClientAttack) else None
    return None


CLIENT_ATTACKS: Registry[ClientAttack] = Registry("client attack")
INVERSION_ATTACKS: Registry[InversionAttack] = Registry("inversion attack")
POISONING_ATTACKS: Registry[PoisoningAttack] = Registry("poisoning attack")
