"""``simulator.run(scenario)``: the one entry point the CLI, the leaderboard and the tests call."""

from __future__ import annotations

import functools
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from simulator.audit.report import plot_scores
from simulator.data.handoff import handoff
from simulator.deploy.run import DeployOptions, run_deployment, run_simulation
from simulator.experiment import run_experiment
from simulator.experiment.leakage import psnr_text, save_grid
from simulator.flower.client_app import client_train_nodes, client_train_split, make_client_app
from simulator.flower.inline import run_inline
from simulator.flower.runtime import Runtime, inline_workers, num_nodes, runtime_for
from simulator.flower.server_app import ServerOutcome, make_server_app
from simulator.flower.warmup import round_seconds, warm_worker
from simulator.plots import plot_rounds
from simulator.results import ResultsStore, RoundRecord, RunResult, default_out_dir, versions, write_outputs
from simulator.run_report import fmt_epsilon, write_report
from simulator.runlog import ENGINE_LOG, RunLog, ray_init_args
from simulator.scenario import Problem, Scenario, ScenarioError

if TYPE_CHECKING:
    from flwr.app import Context
    from flwr.serverapp import Grid
    from rich.progress import TaskID

__all__ = ["DeployOptions", "RunFailed", "default_out_dir", "run", "seed_everything"]


class RunFailed(RuntimeError):
    """The run could not finish; the message says why (partial rounds are in the store)."""


def check_device(s: Scenario) -> None:
    """A CUDA ``simulation.device`` needs a GPU that this process's torch can see: say so before any work."""
    dev = torch.device(s.simulation.device)
    if dev.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ScenarioError(
            s.source,
            [
                Problem(
                    "simulation.device",
                    f"{s.simulation.device!r} but torch {torch.__version__} sees no CUDA GPU; use 'cpu'",
                )
            ],
        )
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ScenarioError(
            s.source,
            [
                Problem(
                    "simulation.device",
                    f"{s.simulation.device!r} but only "
                    f"{torch.cuda.device_count()} CUDA device(s) are visible",
                )
            ],
        )


class _Sink:
    """Progress bar + one line per round + the results store, as each round finishes."""

    def __init__(self, s: Scenario, store: ResultsStore | None, run_id: int | None, progress: bool) -> None:
        self.s, self.store, self.run_id, self.show = s, store, run_id, progress
        self.console = None
        self.bar = None
        self.task: TaskID | None = None
        if progress:
            self.console = Console(stderr=True)
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )

    def on_start(self, scenario: Scenario, runtime: Runtime) -> None:
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task(f"{scenario.name} rounds", total=scenario.federation.rounds)

    def on_round(self, r: RoundRecord) -> None:
        if self.store is not None and self.run_id is not None:
            self.store.add_round(self.run_id, r)
        if self.bar is not None and self.console is not None:
            acc = "  -   " if r.main_accuracy is None else f"{r.main_accuracy:.4f}"
            loss = "  -   " if r.main_loss is None else f"{r.main_loss:.4f}"
            extra = ""
            if r.backdoor_accuracy is not None:
                extra += f"  backdoor {r.backdoor_accuracy:.4f}"
            if r.privacy.get("epsilon") is not None:
                extra += f"  eps {fmt_epsilon(r.privacy['epsilon'])}"
            bad = len(r.rejected) + len(r.failed) + len(r.dropped)
            if bad:
                extra += f"  rejected {len(r.rejected)} failed {len(r.failed)} dropped {len(r.dropped)}"
            self.console.print(
                f"round {r.round:>4}/{self.s.federation.rounds}  acc {acc}  loss {loss}  "
                f"clients {r.clients_aggregated}/{r.clients_sampled}  {r.seconds:6.2f} s{extra}"
            )
            assert self.task is not None  # on_start added the task when it started the bar
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (before the ServerApp runs, in its process)."""
    random.seed(seed)  # Flower's built-in strategies sample with the global `random`
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _run_ray(s: Scenario, sink: _Sink, outcome: ServerOutcome, work_dir: Path | None) -> None:
    """Engine ``ray``: Flower's simulation runtime behind a SuperLink this run starts, as ``flwr run`` does
    for a local simulation (Flower 1.41's supported path; ``flwr.simulation.run_simulation`` is deprecated).
    The ServerApp runs in Flower's ``flwr-simulation`` process and hands each round back
    (:mod:`simulator.deploy.run`). Ray's init arguments are decided here and only here."""
    cpus = s.simulation.num_cpus_per_client
    if cpus != int(cpus):
        raise ScenarioError(
            s.source,
            [
                Problem(
                    "simulation.num_cpus_per_client",
                    f"{cpus}: Flower's simulation runtime (flwr 1.41) reserves whole CPUs per client; use "
                    f"{max(1, round(cpus))}, or simulation.clients_per_node to put several clients on one",
                )
            ],
        )
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": True,
        "logging_level": "WARNING",
    }
    init_args.update(ray_init_args())  # simulator.runlog: Ray's workers print to engine.log, not the terminal
    # a cluster's address, or "local": a new Ray of this run's own, even when another one runs on this machine
    # (ray.init() without an address joins the last cluster started here)
    init_args["address"] = s.simulation.ray_address or "local"
    if not s.simulation.ray_address and s.simulation.ray_num_cpus:
        init_args["num_cpus"] = s.simulation.ray_num_cpus
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(
        s,
        sink,
        outcome,
        work_dir=work_dir,
        num_nodes=num_nodes(s),
        ray_init=init_args,
        client_resources={
            "num_cpus": s.simulation.num_cpus_per_client,
            "num_gpus": s.simulation.num_gpus_per_client,
        },
    )


def run(
    scenario: Scenario,
    *,
    out_dir: str | Path | None = None,
    store: str | Path | None = None,
    progress: bool = False,
    write: bool = True,
    tag: str | None = None,
    verbose: bool = False,
    deployment: DeployOptions | None = None,
    on_grid: tuple[Grid, Context] | None = None,
) -> RunResult:
    """Run a scenario; returns the :class:`RunResult` (the content of summary.json).

    ``out_dir``: where summary.json, rounds.csv, the plots, ``engine.log`` and ``report.html`` go (default: a
    new folder under ``scenario.output.dir``); ``store``: the SQLite results store (default
    ``<output.dir>/privsim-results.sqlite``); ``write=False`` writes nothing (tests, sweeps).
    Flower's and Ray's log lines go to ``engine.log``, not the terminal, unless ``verbose``
    (:mod:`simulator.runlog`); the SuperLink's and SuperNodes' (engines ``ray`` and ``deployment``) to
    ``flower/*.log``. ``deployment``: how engine ``deployment`` runs (``privsim deploy``'s options).
    ``on_grid``: the grid and context of a ServerApp that Flower started (``flwr run`` on privsim's App,
    :mod:`simulator.flower.app`): the run happens on them instead of on an engine privsim starts.
    """
    s = scenario
    check_device(s)
    out = Path(out_dir) if out_dir is not None else default_out_dir(s)
    with RunLog(out / ENGINE_LOG if write else None, verbose=verbose):
        if s.kind != "federated":
            result = run_experiment(s, out_dir=out, store=store, write=write, tag=tag, progress=progress)
        else:
            result = _run_federated(
                s,
                out,
                store=store,
                progress=progress,
                write=write,
                tag=tag,
                deployment=deployment,
                on_grid=on_grid,
            )
    if write:
        write_report(out, source=s.source)
    return result


def _run_federated(
    s: Scenario,
    out: Path,
    *,
    store: str | Path | None,
    progress: bool,
    write: bool,
    tag: str | None,
    deployment: DeployOptions | None,
    on_grid: tuple[Grid, Context] | None,
) -> RunResult:
    if deployment is not None and s.simulation.engine != "deployment":
        raise ScenarioError(
            s.source,
            [Problem("simulation.engine", f"{s.simulation.engine!r}: deployment options need 'deployment'")],
        )
    seed_everything(s.seed)
    rs = None
    run_id = None
    if write:
        rs = ResultsStore(store or s.output.store or Path(s.output.dir) / "privsim-results.sqlite")
        run_id = rs.start_run(digest=s.digest(), name=s.name, out_dir=str(out), tag=tag)
    sink = _Sink(s, rs, run_id, progress)
    outcome = ServerOutcome()
    scenario_json = s.model_dump_json(exclude_unset=True)  # round-trips exactly as the user wrote it
    server_app = make_server_app(s, sink, outcome)
    client_app = make_client_app(scenario_json)
    t0 = time.perf_counter()
    try:
        if on_grid is not None:  # inside a ServerApp Flower started: its grid is the engine
            server_app(*on_grid)
        elif s.simulation.engine == "inline":
            client_rt = runtime_for(scenario_json)  # the clients' runtime before round 1, not inside it
            auto_workers = s.simulation.workers is None and inline_workers(s) > 1
            run_inline(
                server_app,
                client_app,
                num_nodes(s),
                workers=inline_workers(s),
                auto=s.simulation.workers is None,
                rounds=s.federation.rounds,
                train_many=functools.partial(client_train_nodes, scenario_json),
                train_split=functools.partial(client_train_split, scenario_json),
                prepare=functools.partial(warm_worker, scenario_json, handoff()),
                expected_round_seconds=round_seconds(client_rt) if auto_workers else None,
            )
        elif s.simulation.engine == "ray":
            _run_ray(s, sink, outcome, out / "flower" if write else None)
        else:
            run_deployment(
                s,
                sink,
                outcome,
                work_dir=out / "flower" if write else None,
                options=deployment or DeployOptions(),
            )
    finally:
        sink.close()
    wall = time.perf_counter() - t0
    if outcome.error is not None or not outcome.records:
        reason = (
            outcome.status
            if outcome.error is not None
            else (
                "the engine returned no rounds (did the ClientApp's workers die? see engine.log in the "
                "run folder, or run again with --verbose)"
            )
        )
        if rs is not None and run_id is not None:
            rs.fail_run(run_id, reason)
        raise RunFailed(f"{s.name}: {reason}") from outcome.error
    result = RunResult(
        name=s.name,
        scenario=s.resolved(),
        scenario_digest=s.digest(),
        seed=s.seed,
        engine=s.simulation.engine,
        versions=versions(),
        rounds=outcome.records,
        wall_time_s=wall,
        status=outcome.status,
        out_dir=str(out) if write else None,
        warm_start=outcome.warm_start,
        privacy=outcome.privacy,
        audit=outcome.audit,
        defense=outcome.defense,
        inversion=outcome.inversion,
        attack=outcome.attack,
    )
    if write:
        write_outputs(result, out)
        if s.output.plots:
            plot_rounds(
                [r.flat() for r in result.rounds],
                out,
                title=s.name,
                attacker_rounds=(outcome.attack or {}).get("acting_rounds"),
            )
        if outcome.audit_scores:
            a = outcome.audit
            assert a is not None  # the audit block is written with its scores
            plot_scores(
                outcome.audit_scores,
                out / "audit_scores.png",
                title=f"{s.name}: canaries, ε̂ ≥ {a['epsilon_lower']:.2f} (all iterates, "
                f"{a['confidence']:.0%}); ledger ε ≤ {a['epsilon_upper']:.3g}",
            )
        if outcome.attacked:
            assert s.attacks.inversion is not None  # only the in-run inversion attack fills outcome.attacked
            for a in outcome.attacked:  # one grid per attacked update: truth row, reconstruction row
                save_grid(
                    out / "inversion" / f"round{a.round:03d}_client{a.client}.png",
                    a.truth,
                    a.reconstruction,
                    title=f"{s.attacks.inversion.name}, round {a.round}, client {a.client}: "
                    f"PSNR {psnr_text(a.metrics)}",
                )
        assert rs is not None and run_id is not None
        rs.finish_run(run_id, result)
    return result
