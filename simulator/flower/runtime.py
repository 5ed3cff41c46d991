"""Everything a process needs to play clients or the server, built once per process.

A Ray worker (or the inline engine) turns the scenario JSON it receives into a
:class:`Runtime` on first use and keeps it: data, model, plug-ins. Nothing happens at import.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field

from torch import nn

from attacks.base import CLIENT_ATTACKS, ClientAttack
from defenses.base import CLIENT_DEFENSES, ClientDefense
from simulator.allocator import keep_freed_memory
from simulator.audit.record import RecordCanaries
from simulator.context import derive_seed, run_secret
from simulator.data import FederatedData, build_federated_data
from simulator.dp.build import build_privacy
from simulator.dp.mechanism import PrivacyMechanism
from simulator.flat import Layout, layout_of
from simulator.memory_format import channels_last_for
from simulator.models import build_model
from simulator.registry import import_plugins
from simulator.round.cohort import CohortReport
from simulator.sampling import AttackerSchedule, ClientSampler
from simulator.scenario import Problem, Scenario, ScenarioError
from simulator.sketching.base import COMPRESSORS, Compressor
from simulator.training import LocalTrainConfig

__all__ = ["Runtime", "build_runtime", "inline_workers", "num_nodes", "runtime_for"]


@dataclass
class Runtime:
    scenario: Scenario
    data: FederatedData
    model: nn.Module  # reused by every client call in this process (weights reloaded each time)
    layout: Layout
    attack: ClientAttack | None
    schedule: AttackerSchedule
    sampler: ClientSampler
    client_defenses: list[ClientDefense]
    compressor: Compressor
    privacy: PrivacyMechanism
    train: LocalTrainConfig
    secret: int  # this process's privacy secret (DP noise, secret cohort sampling): see context.run_secret
    record_canaries: RecordCanaries | None = None  # [audit] level = "record": the evaluator's canary examples
    cohort_report: CohortReport = field(
        default_factory=CohortReport
    )  # clients trained vectorised / one by one

    def noise_key(self, partition_id: int) -> int:
        """The client's own key for privacy randomness (other clients' keys cannot be derived from it)."""
        return derive_seed(self.secret, "client", partition_id)


def build_runtime(s: Scenario) -> Runtime:
    """Everything a process needs to play the scenario's clients or its server (data, model, plug-ins).
    Tunes the process's allocator for the round's large short-lived tensors
    (:func:`simulator.allocator.keep_freed_memory`)."""
    keep_freed_memory()
    import_plugins()
    attack = (
        CLIENT_ATTACKS.create(s.attacks.backdoor.name, s.attacks.backdoor.params)
        if s.attacks.backdoor
        else None
    )
    data = build_federated_data(
        dataset=s.data.dataset,
        dataset_params=s.data.params,
        num_clients=s.data.num_clients,
        partitioner=s.data.partitioner.name,
        partitioner_params=s.data.partitioner.params,
        test_fraction=s.data.test_fraction,
        client_test_fraction=s.data.client_test_fraction,
        seed=s.seed,
        max_examples=s.data.max_examples,
        reserve=attack.reserve if attack is not None else None,
    )
    model = build_model(
        s.model.name, s.model.params, input_shape=data.input_shape, num_classes=data.num_classes, seed=s.seed
    ).to(s.simulation.device)
    schedule = AttackerSchedule.from_plan(
        s.attacks.plan,
        num_clients=s.data.num_clients,
        seed=s.seed,
        rounds=s.federation.rounds,
        active=attack is not None or s.attacks.poisoning is not None,
    )
    f = s.federation
    secret = run_secret(s.privacy.noise_seed)
    compressor = COMPRESSORS.create(s.compression.name, s.compression.params)
    privacy = build_privacy(s, compressor, secret=secret, dim=layout_of(model).dim)
    # amplification by sampling needs a cohort the adversary cannot recompute from the scenario
    sample_seed = derive_seed(secret, "cohort") if privacy.secret_sampling else s.seed
    sampler = ClientSampler(
        num_clients=s.data.num_clients,
        sampling=f.sampling,
        clients_per_round=f.clients_per_round,
        sampling_rate=f.sampling_rate,
        dropout=f.dropout,
        seed=sample_seed,
        schedule=schedule,
        forced=_inversion_targets(s),
    )
    train = LocalTrainConfig(
        epochs=f.local_epochs,
        batch_size=f.batch_size,
        lr=f.lr,
        optimizer=f.optimizer,
        momentum=f.momentum,
        weight_decay=f.weight_decay,
        max_steps=f.local_steps,
        label_smoothing=f.label_smoothing,
        mixup_alpha=f.mixup_alpha,
        channels_last=_channels_last(s, model),
    )
    canaries = None
    if s.audit is not None and s.audit.level == "record":
        tx = data.train.x
        canaries = RecordCanaries(
            num=s.audit.canaries,
            num_clients=s.data.num_clients,
            input_shape=tuple(data.input_shape),
            num_classes=data.num_classes,
            low=float(tx.min()),
            high=float(tx.max()),
            seed=s.audit.seed if s.audit.seed is not None else derive_seed(s.seed, "audit"),
        )
    return Runtime(
        scenario=s,
        data=data,
        model=model,
        layout=layout_of(model),
        attack=attack,
        schedule=schedule,
        sampler=sampler,
        client_defenses=[CLIENT_DEFENSES.create(d.name, d.params) for d in s.defenses.client],
        compressor=compressor,
        privacy=privacy,
        train=train,
        secret=secret,
        record_canaries=canaries,
    )


def _channels_last(s: Scenario, model: nn.Module) -> bool:
    try:
        return channels_last_for(model, s.simulation.memory_format, s.simulation.device)
    except ValueError as e:
        raise ScenarioError(s.source, [Problem("simulation.memory_format", str(e))]) from None


def _inversion_targets(s: Scenario) -> dict[int, tuple[int, ...]]:
    """Rounds → clients a curious server makes sure to sample (``attacks.inversion.force_sampled``)."""
    inv = s.attacks.inversion
    if inv is None or not inv.force_sampled:
        return {}
    return {r: tuple(inv.targets) for r in inv.rounds}


CPUS_ENV = "PRIVSIM_CPUS"  # the CPU cores a run may use, when it shares the machine (a leaderboard's cells)


def available_cpus() -> int:
    """The CPU cores this run may use: ``PRIVSIM_CPUS`` when set to a positive integer (the leaderboard sets
    each parallel cell's share, or the CPUs its Ray task reserved), else the machine's cores."""
    try:
        n = int(os.environ.get(CPUS_ENV, ""))
    except ValueError:
        n = 0
    return n if n >= 1 else os.cpu_count() or 1


def inline_workers(s: Scenario) -> int:
    """Processes the inline engine may use to play clients (``simulation.workers``; auto: one per available
    CPU core, at most one per client)."""
    if s.simulation.workers is not None:
        return s.simulation.workers
    return max(1, min(available_cpus(), s.data.num_clients))


def evaluation_threads(s: Scenario) -> int:
    """torch intra-op threads for the server's evaluation of the global model. The cores that play the
    clients (``torch_threads`` each) sit idle while the server evaluates, on the inline engine (its worker
    processes and this one) and on a local Ray (its CPU slots), so evaluation uses them: 0.83 → 0.45 s per
    evaluation of quickstart's CNN on 1,000 test images, 1 vs 2 threads (values bit-identical, checked in
    tests/test_client_pool.py). On a Ray cluster and in a deployment the clients are elsewhere:
    ``torch_threads``. Never more than the run's cores (:func:`available_cpus`)."""
    sim, cores = s.simulation, available_cpus()
    if sim.engine == "inline":
        n = inline_workers(s) * sim.torch_threads
    elif sim.engine == "ray" and sim.ray_address is None:
        n = sim.ray_num_cpus or cores
    else:
        n = sim.torch_threads
    return max(1, min(n, cores))


def num_nodes(s: Scenario) -> int:
    """How many Flower nodes play the scenario's clients (:mod:`simulator.flower.nodes`): N /
    clients_per_node when it is set; otherwise one per inline worker, one per Ray CPU slot on a local Ray,
    and one per client on a Ray cluster or a deployment."""
    n, sim = s.data.num_clients, s.simulation
    if sim.clients_per_node is not None:
        return math.ceil(n / sim.clients_per_node)
    if sim.engine == "inline":  # one node per worker process (in this process all train as one cohort)
        return inline_workers(s)
    if sim.engine == "ray" and sim.ray_address is None:
        cpus = sim.ray_num_cpus or available_cpus()
        return max(1, min(n, int(cpus // sim.num_cpus_per_client)))
    return n


_CACHE: dict[str, Runtime] = {}
_LOCK = threading.Lock()


def runtime_for(scenario_json: str) -> Runtime:
    """The process-wide runtime for this scenario (built on first use)."""
    with _LOCK:
        rt = _CACHE.get(scenario_json)
        if rt is None:
            _CACHE.clear()  # one scenario per worker process at a time
            rt = build_runtime(Scenario.model_validate_json(scenario_json))
            _CACHE[scenario_json] = rt
        return rt
