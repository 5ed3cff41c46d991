"""Scenario sections for data, model, federation, simulation engine, evaluation and output."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from simulator.scenario.base import PluginSpec, Strict

__all__ = [
    "DataConfig",
    "Distribution",
    "EvaluationConfig",
    "FederationConfig",
    "LatencyConfig",
    "ModelConfig",
    "OutputConfig",
    "SimulationConfig",
    "WarmStart",
    "expected_cohort",
]


class DataConfig(Strict):
    dataset: str = "mnist5k"
    params: dict = Field(default_factory=dict)  # dataset-specific (hub name, image size ...)
    num_clients: int = Field(default=20, ge=1)
    partitioner: PluginSpec = PluginSpec(name="iid")
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)  # global test split, held by the server
    client_test_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)  # per-client local test split
    max_examples: int | None = Field(default=None, ge=10)  # subsample the data set (quick runs)


class WarmStart(Strict):
    """Start round 1 from a trained model, as the backdoor papers do (OOD_FL / Multi-metrics load a
    checkpoint pre-trained without attackers): ``rounds`` of plain FedAvg on the same clients (no
    attack, no defense, no DP, no compression; cached on disk), or a saved ``checkpoint``."""

    rounds: int | None = Field(default=None, ge=1)
    checkpoint: str | None = None  # a torch state_dict (.pt) of the same model

    @model_validator(mode="after")
    def _one_source(self) -> WarmStart:
        if (self.rounds is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of rounds (pre-train here) or checkpoint (a saved state_dict)")
        return self


class ModelConfig(Strict):
    name: str = "cnn"
    params: dict = Field(default_factory=dict)
    warm_start: WarmStart | None = None


def expected_cohort(num_clients: int, *, clients_per_round: int | None, sampling_rate: float | None) -> float:
    """The expected number of clients a round samples: ``q·N`` for a sampling rate, else ``min(m, N)``, else
    ``N``.

    The one definition the sampler, the privacy accountant, the audit and the warm start all use.

    >>> expected_cohort(200, clients_per_round=None, sampling_rate=0.25)
    50.0
    >>> expected_cohort(20, clients_per_round=50, sampling_rate=None)
    20.0
    """
    if sampling_rate is not None:
        return sampling_rate * num_clients
    if clients_per_round is not None:
        return float(min(clients_per_round, num_clients))
    return float(num_clients)


_DIST_PARAMS = {"constant": ("value",), "uniform": ("low", "high"), "lognormal": ("median", "sigma")}


class Distribution(Strict):
    """A positive quantity drawn once per client (:mod:`simulator.latency`): ``constant`` (``value``),
    ``uniform`` (``low``, ``high``) or ``lognormal`` (``median``, ``sigma``: ``median · exp(sigma · z)``, z
    standard normal). A bare number in a file means ``constant``."""

    distribution: Literal["constant", "uniform", "lognormal"]
    value: float | None = Field(default=None, gt=0.0)
    low: float | None = Field(default=None, gt=0.0)
    high: float | None = Field(default=None, gt=0.0)
    median: float | None = Field(default=None, gt=0.0)
    sigma: float | None = Field(default=None, ge=0.0)

    @model_validator(mode="after")
    def _its_own_params(self) -> Distribution:
        need = _DIST_PARAMS[self.distribution]
        given = {k for k in ("value", "low", "high", "median", "sigma") if getattr(self, k) is not None}
        missing, extra = [k for k in need if k not in given], sorted(given - set(need))
        if missing or extra:
            what = [f"missing {', '.join(missing)}"] if missing else []
            what += [f"{', '.join(extra)} would be ignored"] if extra else []
            raise ValueError(f"{self.distribution} takes {' and '.join(need)}; {'; '.join(what)}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"uniform needs low <= high (got low={self.low}, high={self.high})")
        return self


class LatencyConfig(Strict):
    """``[federation.latency]``: each client's speed (:mod:`simulator.latency`), a fixed property of the
    client drawn once, seeded by ``seed`` (default: from the scenario seed) and the client's partition id."""

    compute: Distribution  # seconds per local step (one mini-batch)
    bandwidth_up_mbps: Distribution  # Mbit/s, client → server
    bandwidth_down_mbps: Distribution  # Mbit/s, server → client
    jitter: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)  # σ: each time × exp(σ·z) per round
    seed: int | None = None

    @field_validator("compute", "bandwidth_up_mbps", "bandwidth_down_mbps", mode="before")
    @classmethod
    def _number_is_constant(cls, v: object) -> object:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return {"distribution": "constant", "value": v}
        return v


class FederationConfig(Strict):
    rounds: int = Field(default=10, ge=1)
    sampling: Literal["fixed", "poisson"] = "fixed"
    clients_per_round: int | None = Field(default=None, ge=1)  # fixed-size sampling
    sampling_rate: float | None = Field(default=None, gt=0.0, le=1.0)  # Poisson rate q (or fixed size q·N)
    local_epochs: int = Field(default=1, ge=1)
    local_steps: int | None = Field(default=None, ge=1)  # cap on local steps per round
    batch_size: int = Field(default=32, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.05, gt=0.0)
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    # > 0: clients train with mixup, λ ~ Beta(α, α) per mini-batch
    mixup_alpha: float = Field(default=0.0, ge=0.0)
    server_lr: float = Field(default=1.0, gt=0.0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # probability a sampled client never answers
    # fewer valid replies than this: the round leaves the model unchanged
    min_replies: int = Field(default=1, ge=0)
    latency: LatencyConfig | None = None  # simulated client times (compute, links): simulator.latency
    # replies later than this (simulated seconds, needs latency) are dropped after training; None: no deadline
    deadline_s: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="after")
    def _one_cohort_rule(self) -> FederationConfig:
        if self.clients_per_round is not None and self.sampling_rate is not None:
            raise ValueError("give either clients_per_round or sampling_rate, not both")
        if self.sampling == "poisson" and self.clients_per_round is not None:
            raise ValueError("Poisson sampling takes sampling_rate (q), not clients_per_round")
        return self

    @model_validator(mode="after")
    def _deadline_needs_latency(self) -> FederationConfig:
        if self.deadline_s is not None and self.latency is None:
            raise ValueError(
                f"deadline_s = {self.deadline_s} needs [federation.latency] (compute, bandwidth_up_mbps, "
                "bandwidth_down_mbps) to time the clients; add it or remove deadline_s"
            )
        return self


class SimulationConfig(Strict):
    # "deployment": a SuperLink and SuperNode processes on this machine (privsim deploy, simulator.deploy)
    engine: Literal["inline", "ray", "deployment"] = "inline"
    num_cpus_per_client: float = Field(default=1.0, gt=0.0)
    num_gpus_per_client: float = Field(default=0.0, ge=0.0)
    ray_address: str | None = None  # "auto" or "host:port" of a Ray cluster; None: a local Ray
    ray_num_cpus: int | None = Field(default=None, ge=1)  # cap Ray's CPUs on a local run
    device: str = "cpu"  # "cpu", "cuda", "cuda:0" (inline engine, server-side evaluation, leakage attacks)
    torch_threads: int = Field(default=1, ge=1)  # torch intra-op threads for client training (both engines)
    round_timeout: float | None = Field(default=None, gt=0.0)  # seconds to wait for replies; None: no limit
    # train the plain clients of a round as one vectorised computation (simulator.vectorised): "auto"
    # measures once per model whether it pays and caches the answer; "on" always; "off" one by one
    vectorise: Literal["auto", "on", "off"] = "auto"
    # the vectorised step's weight layers: "exact" runs each client's own call (bit-identical to per client),
    # "batched" one batched kernel (fast for small dense models, sums in another order); "auto": exact for
    # models with convolutions or pooling, batched otherwise
    vectorise_kernels: Literal["auto", "batched", "exact"] = "auto"
    # local training's memory format (simulator.memory_format): "auto" channels-last for models that measured
    # faster with it (cnn, lenet) on a CPU; "contiguous" the default PyTorch format; "channels_last" always
    memory_format: Literal["auto", "contiguous", "channels_last"] = "auto"
    # inline engine: processes that play the clients (None: auto, both CPU cores once a round's client
    # work is long enough to pay for starting them; 1: everything in this process)
    workers: int | None = Field(default=None, ge=1)
    # clients one node plays (one Flower message, one Ray actor call trains them together); None: auto
    # (inline: the clients split over the workers; ray: over the CPUs; deployment: one per node)
    clients_per_node: int | None = Field(default=None, ge=1)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        # deferred: the scenario schema stays importable without torch; only a device check needs it
        import torch

        try:
            kind = torch.device(v).type
        except (RuntimeError, ValueError):
            kind = None
        if kind not in ("cpu", "cuda"):
            raise ValueError("not a device privsim runs on; use 'cpu', 'cuda' or 'cuda:N'")
        return v

    @model_validator(mode="after")
    def _kernels_need_vectorising(self) -> SimulationConfig:
        if self.vectorise == "off" and self.vectorise_kernels != "auto":
            raise ValueError(
                f"vectorise_kernels = {self.vectorise_kernels!r} chooses the vectorised step's kernels, but "
                "vectorise = 'off' trains every client on its own; set vectorise to 'auto' or 'on', or "
                "remove vectorise_kernels"
            )
        return self

    @model_validator(mode="after")
    def _ray_clients_see_the_gpu(self) -> SimulationConfig:
        if self.engine == "ray" and self.device.startswith("cuda") and self.num_gpus_per_client <= 0:
            raise ValueError(
                f"device {self.device!r} with engine 'ray' needs num_gpus_per_client > 0 (e.g. 0.25): "
                "Ray hides the GPU from a client actor that reserves none"
            )
        return self


class EvaluationConfig(Strict):
    every: int = Field(default=1, ge=1)  # evaluate the global model every k rounds (and the last)
    batch_size: int = Field(default=1024, ge=1)


class OutputConfig(Strict):
    dir: str = "runs"  # each run writes <dir>/<name>-<timestamp>/ unless --out is given
    store: str | None = None  # SQLite results store; default <dir>/privsim-results.sqlite
    plots: bool = True
