"""The ``privsim`` command line: run scenarios, list plug-ins, validate files.

Errors a user can fix (a bad scenario, a bad argument) print one clear message and exit non-zero,
never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from simulator.deploy.run import clients_per_node_for
from simulator.leaderboard import GridError, default_out_dir, default_store, load_grid, run_grid
from simulator.leaderboard.ray_dispatch import RayDispatchError
from simulator.leaderboard.report import outcomes_from_store, print_tables
from simulator.registry import all_registries, did_you_mean
from simulator.run_report import ReportError, fmt_accuracy, fmt_epsilon, fmt_seconds, write_report
from simulator.runner import DeployOptions, RunFailed
from simulator.runner import run as run_scenario
from simulator.scenario import ScenarioError, load_scenario

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="privsim: federated-learning privacy and security simulator (Flower).",
)

__all__ = ["app", "main"]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _load(file: Path, sets: list[str], engine: str | None):
    overrides = list(sets)
    if engine is not None:
        overrides.append(f"simulation.engine={engine!r}".replace("'", '"'))
    try:
        return load_scenario(file, overrides)
    except ScenarioError as e:
        _fail(str(e))


def _run(s: Any, out: Path | None, store: Path | None, quiet: bool, verbose: bool = False) -> Any:
    """``simulator.run`` with its errors as one message each (exit 2: the scenario; exit 1: the run)."""
    try:
        return run_scenario(s, out_dir=out, store=store, progress=not quiet, verbose=verbose)
    except ScenarioError as e:  # what only running can tell: no GPU, image indices past the data set ...
        _fail(str(e))
    except RunFailed as e:
        _fail(f"run failed: {e}", 1)
    raise AssertionError("unreachable: _fail exits")


@app.command()
def run(
    file: Path = typer.Argument(..., help="scenario TOML file"),
    sets: list[str] = typer.Option(
        [], "--set", help="override a field: --set federation.rounds=3 (repeatable)"
    ),
    out: Path | None = typer.Option(
        None, "--out", help="output folder (default: a new one under output.dir)"
    ),
    store: Path | None = typer.Option(None, "--store", help="SQLite results store"),
    engine: str | None = typer.Option(
        None, "--engine", help="inline | ray | deployment (overrides simulation.engine)"
    ),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar or per-round lines"),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        help="also show this process's Flower and Ray log lines in the terminal (always in <run>/engine.log)",
    ),
) -> None:
    """Run a scenario; writes summary.json, rounds.csv, plots and report.html, and appends to the results
    store."""
    s = _load(file, sets, engine)
    result = _run(s, out, store, quiet, verbose)
    d = result.to_dict()
    fin = d["final"]
    parts = []
    if fin.get("main_accuracy") is not None:
        parts.append(f"final main accuracy {fmt_accuracy(fin['main_accuracy'])}")
    line = "; ".join([f"{s.name}: {result.status}", *parts])
    if fin.get("backdoor_accuracy") is not None:
        line += f", backdoor accuracy {fmt_accuracy(fin['backdoor_accuracy'])}"
    if d.get("privacy"):
        line += f", epsilon {fmt_epsilon(d['privacy'].get('epsilon'))}"
    inv = d.get("inversion") if isinstance(d.get("inversion"), dict) else None
    if inv is not None and inv.get("refused"):
        line += f", the client refused the model ({inv['refused'][:80]}...)"
    elif inv is not None and (inv.get("psnr") is not None or inv.get("mse") == 0.0):
        psnr = inv.get("psnr")
        exact = psnr is None or psnr == "inf"  # summary.json writes an exact reconstruction's ∞ as "inf"
        line += ", PSNR " + ("inf (exact)" if exact else f"{float(psnr):.2f} dB")
        if inv.get("recovered_fraction") is not None:
            line += f", recovered {inv['recovered_fraction']:.0%} of the images (>= 40 dB)"
    typer.echo(f"{line}; {fmt_seconds(result.wall_time_s)}; results in {result.out_dir} (open report.html)")


@app.command()
def report(
    folder: Path = typer.Argument(..., help="a run folder (the one with summary.json)"),
    out: Path | None = typer.Option(
        None, "--out", help="where to write the page (default <folder>/report.html)"
    ),
) -> None:
    """Write a run's report.html: one self-contained page with its summary, round table, plots,
    reconstructions and privacy / audit / defense / attack blocks (images embedded: it can be mailed)."""
    if not folder.is_dir():
        _fail(f"{folder}: no such folder; give a run folder (the --out of privsim run)")
    try:
        path = write_report(folder, out=out)
    except ReportError as e:
        _fail(str(e))
    typer.echo(f"report: {path}")


@app.command()
def audit(
    file: Path = typer.Argument(..., help="scenario TOML file (its [audit] section, or a default one)"),
    sets: list[str] = typer.Option([], "--set", help="override a field (repeatable)"),
    canaries: int | None = typer.Option(None, "--canaries", help="number of canaries (default 1000)"),
    out: Path | None = typer.Option(None, "--out", help="output folder"),
    store: Path | None = typer.Option(None, "--store", help="SQLite results store"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar or per-round lines"),
) -> None:
    """Run a scenario with an empirical privacy audit: the ledger's ε (upper) beside the audit's ε̂ (lower)."""
    base = _load(file, sets, None)
    extra = list(sets)
    if base.audit is None:  # the canaries that match the scenario's privacy level
        level = "record" if base.privacy.level == "record" else "client"
        extra.append(f'audit={{level="{level}"}}')
    if canaries is not None:
        extra.append(f"audit.canaries={canaries}")
    s = _load(file, extra, None)
    result = _run(s, out, store, quiet)
    a = result.audit
    assert a is not None  # the scenario was given an [audit] section above
    upper = a["epsilon_upper"]
    up = "inf (no DP)" if upper is None or upper == float("inf") else fmt_epsilon(upper)
    typer.echo(
        f"{s.name}: {a['level']}-level audit, {a['canaries']} canaries ({a['statistic']}): "
        f"epsilon lower bound {fmt_epsilon(a['epsilon_lower'])} at {a['confidence']:.0%} confidence, "
        f"ledger epsilon {up}, AUC {fmt_accuracy(a['auc'])}; results in {result.out_dir}"
    )


@app.command()
def deploy(
    file: Path = typer.Argument(..., help="scenario TOML file"),
    sets: list[str] = typer.Option([], "--set", help="override a field (repeatable)"),
    supernodes: int | None = typer.Option(
        None,
        "--supernodes",
        min=1,
        help="SuperNode processes (default: one per client; fewer: each plays an equal group of clients)",
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="FOR TESTING ONLY: no TLS and no SuperNode authentication"
    ),
    out: Path | None = typer.Option(
        None, "--out", help="output folder (default: a new one under output.dir)"
    ),
    store: Path | None = typer.Option(None, "--store", help="SQLite results store"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar or per-round lines"),
) -> None:
    """Run a scenario on a real Flower deployment on this machine: a SuperLink and SuperNode processes (one
    per client partition), with TLS and SuperNode authentication; stops them all at the end. Same results as
    privsim run; Flower's logs go to <run>/flower/."""
    s = _load(file, sets, "deployment")
    if supernodes is not None:
        try:
            per_node = clients_per_node_for(s.data.num_clients, supernodes)
        except ValueError as e:
            _fail(f"--supernodes: {e}")
        s = _load(file, [*sets, f"simulation.clients_per_node={per_node}"], "deployment")
    try:
        result = run_scenario(
            s,
            out_dir=out,
            store=store,
            progress=not quiet,
            deployment=DeployOptions(insecure=insecure),
        )
    except ScenarioError as e:
        _fail(str(e))
    except RunFailed as e:
        _fail(f"run failed: {e}", 1)
    acc = result.final.get("main_accuracy")
    mode = "insecure: no TLS, no SuperNode authentication" if insecure else "TLS, SuperNode authentication"
    typer.echo(
        f"{s.name}: {result.status} on a local deployment ({mode})"
        + (f"; final main accuracy {fmt_accuracy(acc)}" if acc is not None else "")
        + f"; {fmt_seconds(result.wall_time_s)}; results in {result.out_dir} (Flower's logs in flower/)"
    )


@app.command()
def validate(
    file: Path = typer.Argument(..., help="scenario TOML file"),
    sets: list[str] = typer.Option([], "--set", help="override a field (repeatable)"),
    show: bool = typer.Option(False, "--show", help="print the resolved scenario as JSON"),
) -> None:
    """Check a scenario file without running it."""
    s = _load(file, sets, None)
    if show:
        typer.echo(json.dumps(s.resolved(), indent=2))
    typer.echo(f"{file}: ok ({s.kind}, digest {s.digest()})")


@app.command("list")
def list_plugins(kind: str | None = typer.Argument(None, help="one registry, e.g. 'aggregator'")) -> None:
    """Every registry and its plug-ins, one line of doc each."""
    regs = all_registries()
    if kind is not None and kind not in regs:
        _fail(f"unknown registry {kind!r}{did_you_mean(kind, list(regs))}; known: {', '.join(regs)}")
    for name, reg in regs.items():
        if kind is not None and name != kind:
            continue
        typer.echo(f"{name}:")
        for e in reg.entries():
            params = ", ".join(e.params.model_fields) or "-"
            typer.echo(f"  {e.name:<22} {e.summary}  [params: {params}]")


leaderboard_app = typer.Typer(
    no_args_is_help=True, help="Attack × defense leaderboards over a grid of scenarios."
)
app.add_typer(leaderboard_app, name="leaderboard")


def _load_grid(file: Path, sets: list[str] | None = None):
    try:
        return load_grid(file, sets or [])
    except GridError as e:
        _fail(str(e))


@leaderboard_app.command("run")
def leaderboard_run(
    file: Path = typer.Argument(..., help="grid TOML file (format: simulator/leaderboard/grid.py)"),
    out: Path | None = typer.Option(
        None, "--out", help="leaderboard folder (default <output.dir>/leaderboard/<name>)"
    ),
    store: Path | None = typer.Option(
        None, "--store", help="SQLite results store (default: the base scenario's)"
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, help="cells run in parallel processes (forced to 1 for ray cells)"
    ),
    rerun: bool = typer.Option(False, "--rerun", help="recompute cells already finished in the store"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    sets: list[str] = typer.Option(
        [],
        "--set",
        help="override a field of every cell, after the grid's own "
        "overrides and before its axes (repeatable)",
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="run each cell as a Ray task on this Ray cluster: 'auto' (on a machine of the cluster) or the "
        "head's host:port; cells lost with a node are retried on the others (README: Ray cluster)",
    ),
) -> None:
    """Run every cell of a grid not yet in the store; write leaderboard.md / .csv / .html and heatmaps."""
    grid = _load_grid(file, sets)
    out_dir = out or default_out_dir(grid)
    try:
        result = run_grid(
            grid,
            store=store or default_store(grid),
            out_dir=out_dir,
            workers=workers,
            rerun=rerun,
            progress=not quiet,
            ray_address=ray_address,
        )
    except RayDispatchError as e:
        _fail(str(e))
    typer.echo(
        f"{grid.name}: {len(result.cells)} cells: {result.count('completed')} completed, "
        f"{result.count('skipped')} done (stored), {result.count('failed')} failed; "
        f"leaderboard in {out_dir}"
    )
    if result.count("failed") == len(result.cells) and result.cells:
        _fail("every cell failed", 1)


@leaderboard_app.command("show")
def leaderboard_show(
    file: Path = typer.Argument(..., help="grid TOML file"),
    store: Path | None = typer.Option(
        None, "--store", help="SQLite results store (default: the base scenario's)"
    ),
    sets: list[str] = typer.Option([], "--set", help="the same --set overrides the grid was run with"),
) -> None:
    """Print a grid's leaderboard from the results store (cells not run yet show as 'not run')."""
    grid = _load_grid(file, sets)
    print_tables(grid, outcomes_from_store(grid, store or default_store(grid)))


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        typer.echo("interrupted; finished rounds are in the results store", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
