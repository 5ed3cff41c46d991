"""The privsim ServerApp: the whole run, round by round, on any Flower ``Grid``.

The same function drives Ray's simulation engine (``run_simulation``) and the inline engine.
Results leave through a :class:`RoundSink` as each round finishes.

An aggregator that ``needs_root_update`` (FLTrust) makes the server hold a small clean root set: ``root_size``
examples drawn, seeded by the scenario seed, uniformly without replacement from the global test split. That
is an assumption of the rule (the server's data come from the clients' distribution, as in the paper's main
setting); the drawn examples are removed from the evaluator's test set, so main and backdoor accuracies are
measured on data the server never trained on (the test set shrinks by ``root_size``; the defense block of
summary.json records both sizes).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from defenses.base import AGGREGATORS, SERVER_DEFENSES
from defenses.detection import detection_rates
from simulator.backdoor_metrics import backdoor_lifespan
from simulator.context import derive_seed
from simulator.flat import flatten
from simulator.flower.nodes import NodeMap
from simulator.flower.observer import InversionObserver
from simulator.flower.polling import send_and_receive
from simulator.flower.runtime import Runtime, build_runtime, evaluation_threads, num_nodes
from simulator.flower.secaggplus import FlowerSecAggPlus
from simulator.flower.strategy import PrivsimStrategy
from simulator.results import RoundRecord
from simulator.round.audit import ClientAudit, record_audit_block
from simulator.round.secure_sum import SecureSum, SimulatedSecureAggregation
from simulator.scenario import Problem, Scenario, ScenarioError
from simulator.training import evaluate
from simulator.vectorised import why_not_vectorised
from simulator.warm_start import apply_warm_start

__all__ = [
    "RoundSink",
    "ServerOutcome",
    "discover_partitions",
    "make_server_app",
    "root_split",
    "server_main",
]


class RoundSink(Protocol):
    def on_start(self, scenario: Scenario, runtime: Runtime) -> None: ...
    def on_round(self, record: RoundRecord) -> None: ...


@dataclass
class ServerOutcome:
    records: list[RoundRecord] = field(default_factory=list)
    status: str = "not started"
    warm_start: dict[str, Any] | None = None  # summary.json's blocks (see simulator.results.RunResult)
    privacy: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    defense: dict[str, Any] | None = None
    inversion: dict[str, Any] | None = None
    attack: dict[str, Any] | None = None
    error: BaseException | None = None
    attacked: list[Any] = field(default_factory=list)  # in-run inversion results (images for the grids)
    audit_scores: dict[str, Any] = field(
        default_factory=dict
    )  # canary scores (in, out) per statistic, for the plot


def discover_partitions(grid: Grid, num_nodes: int, num_clients: int, *, timeout: float = 300.0) -> NodeMap:
    """Wait until all nodes are connected, then ask each for its node index (the partitions it plays follow
    from it, :mod:`simulator.flower.nodes`).

    Sampling before every node has registered would draw from a partial population (Flower's
    FedAvg does, early in a simulation); node ids are random, so node indices are learnt by query.
    """
    deadline = time.time() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= num_nodes:
            break
        if time.time() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {num_nodes} nodes connected after {timeout:.0f} s")
        time.sleep(0.05)
    msgs = [
        Message(
            RecordDict({"query": ConfigRecord({"want": "partition-id"})}),
            dst_node_id=n,
            message_type=MessageType.QUERY,
        )
        for n in nodes
    ]
    replies = send_and_receive(grid, msgs, timeout=timeout)
    out: dict[int, int] = {}
    for r in replies:
        if r.has_error():
            raise RuntimeError(
                f"node {r.metadata.src_node_id} failed to report its partition: {r.error.reason}"
            )
        info = r.content["info"]
        pid, total = info["partition-id"], info.get("num-partitions", num_nodes)
        assert isinstance(pid, int) and isinstance(total, int)  # client_query sends ints
        if total != num_nodes:
            raise RuntimeError(
                f"node {r.metadata.src_node_id} thinks there are {total} nodes, not {num_nodes}"
            )
        out[r.metadata.src_node_id] = int(pid)
    if len(out) != num_nodes or sorted(out.values()) != list(range(num_nodes)):
        raise RuntimeError(f"partition discovery incomplete: got {sorted(out.values())}")
    return NodeMap(out, num_clients=num_clients)


def root_split(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(root, rest)``: ``size`` of the ``n`` test-split positions drawn uniformly without replacement
    (seeded), and the others, both sorted.

    >>> root, rest = root_split(10, 3, seed=0)
    >>> len(root), len(rest), sorted(set(root) | set(rest)) == list(range(10))
    (3, 7, True)
    """
    if not 0 < size < n:
        raise ValueError(f"a root set of {size} examples needs a test split larger than that (it has {n})")
    rng = np.random.default_rng(derive_seed(seed, "fltrust", "root-set"))
    root = np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)
    return root, np.setdiff1d(np.arange(n, dtype=np.int64), root)


def _evaluator(rt: Runtime, keep: np.ndarray | None = None):
    """Main (and backdoor) accuracy on the global test split, or on its positions ``keep``."""
    s = rt.scenario
    test_x, test_y = rt.data.test.x, rt.data.test.y
    if keep is not None:
        idx = torch.as_tensor(keep, dtype=torch.long)
        test_x, test_y = test_x[idx], test_y[idx]
    bd = rt.attack.backdoor_testset(test_x, test_y) if rt.attack is not None else None
    threads = evaluation_threads(s)

    def run(model: torch.nn.Module) -> dict[str, float]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)  # the clients' cores are idle while the server evaluates
        try:
            acc, loss = evaluate(model, test_x, test_y, s.evaluation.batch_size)
            out = {"main_accuracy": acc, "main_loss": loss}
            if bd is not None:
                bd_acc, _ = evaluate(model, bd[0], bd[1], s.evaluation.batch_size)
                out["backdoor_accuracy"] = bd_acc
        finally:
            torch.set_num_threads(before)
        return out

    return run


def _nanmean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(vals) / len(vals) if vals else None


def _defense_block(s: Scenario, records: list[RoundRecord]) -> dict[str, Any]:
    """Mean detection rates over the rounds where they are defined (TPR: rounds with attackers)."""
    return {
        "aggregator": s.defenses.aggregator.name,
        "tpr": _nanmean([r.defense_tpr for r in records]),
        "fpr": _nanmean([r.defense_fpr for r in records]),
    }


def server_main(grid: Grid, scenario: Scenario, sink: RoundSink, outcome: ServerOutcome) -> None:
    s = scenario
    rt = build_runtime(s)
    torch.set_num_threads(max(1, s.simulation.torch_threads))
    kernels = s.simulation.vectorise_kernels
    why = why_not_vectorised(rt.model, rt.train, kernels) if s.simulation.vectorise == "on" else None
    if why is not None:  # "on" is a promise: refuse it rather than train per client behind the user's back
        raise ScenarioError(
            s.source,
            [
                Problem(
                    "simulation.vectorise",
                    f"'on', but this training cannot be vectorised: {why}; use 'auto' or 'off'",
                )
            ],
        )
    model = copy.deepcopy(rt.model)
    warm = apply_warm_start(model, s, rt.data, rt.train)  # before anything reads the initial weights
    outcome.warm_start = warm
    observer = None
    if s.attacks.inversion is not None:  # step 9: the in-run inversion attack
        observer = InversionObserver(rt, model)
    audit = None
    if s.audit is not None and s.audit.level == "client":
        audit = ClientAudit(
            s.audit,
            rt.privacy,
            dim=rt.layout.dim,
            rate=rt.sampler.expected_size / s.data.num_clients,
            expected_clients=rt.sampler.expected_size,
            scenario_seed=s.seed,
        )
    secure_sum: SecureSum | None = None
    if s.secure_aggregation is not None:  # the server plug-ins see the sum alone
        key = (
            s.secure_aggregation.seed
            if s.secure_aggregation.seed is not None
            else derive_seed(rt.secret, "secagg")
        )
        secure_sum = (
            SimulatedSecureAggregation(s.secure_aggregation, key)
            if s.secure_aggregation.mode == "simulated"
            else FlowerSecAggPlus(s.secure_aggregation, key)
        )
        problems = secure_sum.check([len(ix) for ix in rt.data.client_indices])
        if problems:
            raise ScenarioError(s.source, [Problem("secure_aggregation.max_weight", p) for p in problems])
    strategy = PrivsimStrategy(
        runtime=rt,
        model=model,
        secure_sum=secure_sum,
        aggregator=AGGREGATORS.create(s.defenses.aggregator.name, s.defenses.aggregator.params),
        server_defenses=[SERVER_DEFENSES.create(d.name, d.params) for d in s.defenses.server],
        observer=observer,
        audit=audit,
    )
    keep = None
    agg = strategy.plugins.aggregator
    if agg.needs_root_update:  # the server's root set, out of the evaluator's test set
        try:
            root, keep = root_split(len(rt.data.test), agg.root_size, s.seed)
        except ValueError as e:
            raise ScenarioError(s.source, [Problem("defenses.aggregator.params.root_size", str(e))]) from None
        ridx = torch.as_tensor(root, dtype=torch.long)
        strategy.use_root(rt.data.test.x[ridx], rt.data.test.y[ridx])
    initial = flatten(model.state_dict(), rt.layout).clone()
    evaluate_model = _evaluator(rt, keep)
    sink.on_start(s, rt)

    # ---- CONNECT: all nodes registered, partition of each node known ----
    strategy.set_nodes(discover_partitions(grid, num_nodes(s), s.data.num_clients))
    arrays = ArrayRecord(model.state_dict())
    outcome.status = "running"
    for rnd in range(1, s.federation.rounds + 1):
        t0 = time.perf_counter()
        # ---- TRAINING (CLIENTAPP-SIDE) ----
        msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
        replies = send_and_receive(grid, msgs, timeout=s.simulation.round_timeout) if msgs else []
        # ---- AGGREGATION (SERVER-SIDE) ----
        new_arrays, _ = strategy.aggregate_train(rnd, replies)
        if new_arrays is not None:
            arrays = new_arrays
        record = strategy.record
        assert record is not None
        # ---- EVALUATION (SERVER-SIDE, GLOBAL TEST SPLIT) ----
        if rnd % s.evaluation.every == 0 or rnd == s.federation.rounds:
            ev = evaluate_model(model)
            record.main_accuracy, record.main_loss = ev["main_accuracy"], ev["main_loss"]
            record.backdoor_accuracy = ev.get("backdoor_accuracy")
        record.privacy = rt.privacy.round_report(rnd, strategy.client_metrics)
        if (
            rt.attack is not None or s.attacks.poisoning is not None
        ) and strategy.valid_ids:  # detection, against the evaluator's ground truth
            tpr, fpr = detection_rates(record.accepted, strategy.valid_ids, record.malicious)
            record.defense_tpr, record.defense_fpr = tpr, fpr
        record.seconds = time.perf_counter() - t0
        # ---- RECORD ----
        outcome.records.append(record)
        sink.on_round(record)
        if rt.privacy.budget_exhausted():
            outcome.status = f"stopped: privacy budget spent after round {rnd}"
            break
    else:
        outcome.status = "completed"
    outcome.privacy = rt.privacy.summary()
    if audit is not None:
        scores = audit.scores(flatten(model.state_dict(), rt.layout) - initial)
        outcome.audit = audit.block(
            scores, delta=s.privacy.delta, epsilon_upper=rt.privacy.epsilon_of_view("aggregate")
        )
        outcome.audit_scores = scores
    if rt.record_canaries is not None and s.audit is not None:
        outcome.audit, outcome.audit_scores = record_audit_block(
            rt.record_canaries, model, s.audit, rt.privacy, s.privacy.delta
        )
    outcome.defense = _defense_block(s, outcome.records)
    if keep is not None:
        outcome.defense.update(root_examples=len(rt.data.test) - len(keep), test_examples=len(keep))
    if observer is not None:
        outcome.inversion = observer.summary()
        outcome.attacked = observer.attacked
    if rt.attack is not None or s.attacks.poisoning is not None:
        acting = rt.schedule.acting_rounds()
        outcome.attack = {
            "name": s.attacks.backdoor.name
            if s.attacks.backdoor
            else (s.attacks.poisoning.name if s.attacks.poisoning else None),
            "kind": "poisoning" if s.attacks.poisoning is not None else "client attack",
            "malicious_ids": list(rt.schedule.malicious_ids),
            "acting_rounds": acting,
            "lifespan": backdoor_lifespan(
                [(r.round, r.backdoor_accuracy) for r in outcome.records],
                [a for a in acting if a <= (outcome.records[-1].round if outcome.records else 0)],
            ),
        }


def make_server_app(scenario: Scenario, sink: RoundSink, outcome: ServerOutcome) -> ServerApp:
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            server_main(grid, scenario, sink, outcome)
        except BaseException as e:  # surfaced by simulator.run after the engine returns
            outcome.error = e
            outcome.status = f"failed: {type(e).__name__}: {e}"

    return app
