"""Simulated client latency: how long each client takes in a round, in simulated seconds.

A client's speed is a fixed property of the client, drawn once from the scenario's distributions
(``[federation.latency]``, :class:`~simulator.scenario.core.LatencyConfig`): seconds per local step, and its
up- and down-link bandwidth in Mbit/s. Each of the three is drawn from its own generator, seeded by
(latency seed, partition id, component), so a client's compute speed does not change when the bandwidth
distribution does, and no client's draw depends on which others were sampled. A client's time in a round is

    t = 8 · bytes_down / (10⁶ · down_mbps) + steps · step_seconds + 8 · bytes_up / (10⁶ · up_mbps)

with ``bytes_down`` the global model it received, ``steps`` the local steps it reports (the ``local-steps``
metric) and ``bytes_up`` its payload's real size (after compression). With ``jitter`` σ > 0, each of the three
terms is multiplied by its own per-round factor ``exp(σ · z)``, z ~ N(0, 1) seeded by (seed, round, partition
id, component): the client's speed varies around its fixed median from round to round.

The time model (computation latency from the device's speed plus communication latency from the payload size
and the link's bandwidth) is the one of FedScale (Lai et al., "FedScale: Benchmarking Model and System
Performance of Federated Learning at Scale", ICML 2022), here with parametric distributions instead of device
traces; the server's reporting deadline, after which late devices are ignored, follows Bonawitz et al.,
"Towards Federated Learning at Scale: System Design" (MLSys 2019) (:mod:`simulator.round.deadline`).

Pure and cheap: nothing here imports Flower or a plug-in, and a model holds only its configuration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulator.context import derive_seed
from simulator.scenario.core import Distribution, FederationConfig, LatencyConfig

__all__ = ["ClientSpeed", "LatencyModel", "draw", "transfer_seconds"]

_COMPONENTS = ("compute", "up", "down")


def draw(dist: Distribution, rng: np.random.Generator) -> float:
    """One value of ``dist`` from ``rng`` (a constant draws nothing).

    >>> d = Distribution(distribution="lognormal", median=2.0, sigma=0.0)
    >>> draw(d, np.random.default_rng(0))
    2.0
    """
    if dist.distribution == "constant":
        assert dist.value is not None  # Distribution checked its parameters
        return float(dist.value)
    if dist.distribution == "uniform":
        assert dist.low is not None and dist.high is not None
        return float(rng.uniform(dist.low, dist.high))
    assert dist.median is not None and dist.sigma is not None
    return float(dist.median * math.exp(dist.sigma * float(rng.standard_normal())))


def transfer_seconds(nbytes: float, mbps: float) -> float:
    """Seconds to send ``nbytes`` over a link of ``mbps`` Mbit/s (10⁶ bit/s).

    >>> transfer_seconds(1_000_000, 8.0)
    1.0
    """
    return 8.0 * float(nbytes) / (1e6 * mbps)


@dataclass(frozen=True)
class ClientSpeed:
    """One client's speed (in a round, when jittered)."""

    step_seconds: float  # seconds per local step
    up_mbps: float
    down_mbps: float

    def seconds(self, *, steps: int, bytes_up: int, bytes_down: int) -> float:
        """Download + local training + upload, in seconds.

        >>> ClientSpeed(0.1, up_mbps=8.0, down_mbps=80.0).seconds(steps=10, bytes_up=10**6, bytes_down=10**7)
        3.0
        """
        return (
            transfer_seconds(bytes_down, self.down_mbps)
            + steps * self.step_seconds
            + transfer_seconds(bytes_up, self.up_mbps)
        )


class LatencyModel:
    """Seeded per-client speeds (see the module docstring); the same ``seed`` gives the same clients."""

    def __init__(
        self,
        compute: Distribution,
        bandwidth_up_mbps: Distribution,
        bandwidth_down_mbps: Distribution,
        *,
        seed: int,
        jitter: float = 0.0,
    ) -> None:
        if not (jitter >= 0.0 and math.isfinite(jitter)):
            raise ValueError(f"jitter must be a finite number >= 0, got {jitter!r}")
        self.dists = {"compute": compute, "up": bandwidth_up_mbps, "down": bandwidth_down_mbps}
        self.seed, self.jitter = int(seed), float(jitter)
        self._speeds: dict[int, ClientSpeed] = {}

    @classmethod
    def from_config(cls, cfg: LatencyConfig, scenario_seed: int) -> LatencyModel:
        """The model of ``[federation.latency]``, seeded by ``cfg.seed`` or else from the scenario's seed."""
        seed = cfg.seed if cfg.seed is not None else derive_seed(scenario_seed, "latency")
        return cls(cfg.compute, cfg.bandwidth_up_mbps, cfg.bandwidth_down_mbps, seed=seed, jitter=cfg.jitter)

    @classmethod
    def for_federation(cls, federation: FederationConfig, scenario_seed: int) -> LatencyModel | None:
        """The scenario's latency model, or None when it models none (no ``[federation.latency]``)."""
        if federation.latency is None:
            return None
        return cls.from_config(federation.latency, scenario_seed)

    def speed(self, client: int) -> ClientSpeed:
        """The client's fixed speed (the median of its per-round speeds when jittered)."""
        s = self._speeds.get(client)
        if s is None:
            v = {
                c: draw(self.dists[c], np.random.default_rng(derive_seed(self.seed, "client", client, c)))
                for c in _COMPONENTS
            }
            s = self._speeds[client] = ClientSpeed(v["compute"], up_mbps=v["up"], down_mbps=v["down"])
        return s

    def round_speed(self, client: int, server_round: int) -> ClientSpeed:
        """The client's speed in ``server_round``: its fixed speed times the round's jitter factors."""
        s = self.speed(client)
        if self.jitter == 0.0:
            return s
        f = {
            c: math.exp(
                self.jitter
                * float(
                    np.random.default_rng(
                        derive_seed(self.seed, "jitter", server_round, client, c)
                    ).standard_normal()
                )
            )
            for c in _COMPONENTS
        }
        return ClientSpeed(
            s.step_seconds * f["compute"], up_mbps=s.up_mbps / f["up"], down_mbps=s.down_mbps / f["down"]
        )

    def seconds(self, client: int, server_round: int, *, steps: int, bytes_up: int, bytes_down: int) -> float:
        """The client's simulated time in ``server_round`` (download + ``steps`` local steps + upload)."""
        return self.round_speed(client, server_round).seconds(
            steps=steps, bytes_up=bytes_up, bytes_down=bytes_down
        )
