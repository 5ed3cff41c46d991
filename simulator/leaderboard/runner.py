"""Run a leaderboard grid: resumable (cells are keyed by scenario digest in the results store), optionally
parallel.

Every cell calls :func:`simulator.runner.run` with ``write=True``, its own folder
``<out_dir>/cells/<label-path>-<digest[:8]>/`` and the shared SQLite store. The store commits each run as it
finishes, so killing the grid at any moment loses no finished cell: the next ``run_grid`` finds those cells
with :meth:`ResultsStore.finished` and skips them (``rerun=True`` recomputes them). A cell interrupted mid-run
leaves a ``running`` row behind; it is simply run again.

A cell that fails (:class:`simulator.runner.RunFailed` or any other exception) is recorded in the store with
status ``failed: <reason>`` and the grid goes on.

Parallelism on this machine: ``workers > 1`` runs cells in a :class:`concurrent.futures.ProcessPoolExecutor`
with the ``spawn`` context; each cell may use its share of the CPU cores (``PRIVSIM_CPUS``, read by the
engine's automatic worker and thread counts). Cells with ``simulation.engine = "ray"`` each start their own
Ray runtime, which does not mix with worker processes: if any cell uses Ray the grid runs with
``workers = 1`` (a warning says so).

On a Ray cluster: ``ray_address`` (``privsim leaderboard run --ray-address``) runs every cell as one Ray task
on the cluster, retried on another node when its node dies; this process writes each cell's result to the
store as its task finishes (:mod:`simulator.leaderboard.ray_dispatch`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from simulator.flower.runtime import CPUS_ENV
from simulator.leaderboard.grid import Cell, Grid
from simulator.leaderboard.ray_dispatch import RayDispatchError, check_cells, run_cells_on_ray
from simulator.leaderboard.report import (
    INTEGRITY_METRICS,
    PRIVACY_METRICS,
    cell_metrics,
    format_value,
    write_reports,
)
from simulator.results import ResultsStore
from simulator.runner import RunFailed, run
from simulator.scenario import scenario_from_dict

__all__ = ["CellOutcome", "GridRun", "default_out_dir", "default_store", "run_grid"]


@dataclass
class CellOutcome:
    """What happened to one cell in a grid run.

    Attributes
    ----------
    status
        ``"skipped"`` (already finished in the store), ``"completed"`` or ``"failed"``.
    summary
        The run's summary dict (summary.json) when completed or skipped, else ``None``.
    reason
        Why the cell failed.
    """

    cell: Cell
    status: Literal["skipped", "completed", "failed"]
    summary: dict[str, Any] | None = None
    reason: str | None = None
    seconds: float = 0.0


@dataclass
class GridRun:
    """The outcome of :func:`run_grid`: one :class:`CellOutcome` per cell, in grid order."""

    grid: Grid
    out_dir: Path
    store: Path
    cells: list[CellOutcome] = field(default_factory=list)
    workers: int = 1
    ray_address: str | None = None  # the Ray cluster the cells ran on, if any

    def count(self, status: str) -> int:
        """How many cells ended with ``status``."""
        return sum(1 for c in self.cells if c.status == status)


def default_store(grid: Grid) -> Path:
    """The store the base scenario would use: ``output.store`` or ``<output.dir>/privsim-results.sqlite``."""
    s = grid.cells[0].scenario
    return Path(s.output.store) if s.output.store else Path(s.output.dir) / "privsim-results.sqlite"


def default_out_dir(grid: Grid) -> Path:
    """``<output.dir>/leaderboard/<grid name>``."""
    return Path(grid.cells[0].scenario.output.dir) / "leaderboard" / grid.name


def _record_failure(
    store: str, digest: str, name: str, out_dir: str, tag: str, reason: str, since: float
) -> None:
    """Mark the cell's ``running`` row (started by this attempt) failed, or add a failed row if it has
    none."""
    rs = ResultsStore(store)
    mine = [
        r
        for r in rs.runs()
        if r["digest"] == digest
        and r["status"] == "running"
        and r["out_dir"] == out_dir
        and r["started_at"] >= since - 1
    ]
    if mine:
        rs.fail_run(int(mine[-1]["id"]), reason)
    else:
        rs.fail_run(rs.start_run(digest=digest, name=name, out_dir=out_dir, tag=tag), reason)


def share_cpus(n: int) -> None:
    """In a cell's process: the run may use ``n`` CPU cores (:func:`simulator.flower.runtime.available_cpus`),
    so that cells running side by side do not each size their client workers and evaluation threads to the
    whole machine."""
    os.environ[CPUS_ENV] = str(max(1, int(n)))


def _run_cell(
    data: dict[str, Any], source: str | None, digest: str, out_dir: str, store: str, tag: str
) -> tuple[str, dict[str, Any] | None, str | None, float]:
    """Run one cell (a top-level function so the spawn pool can pickle it).

    Returns
    -------
    tuple
        ``(status, summary, reason, seconds)`` with status ``"completed"`` or ``"failed"``.
    """
    t0 = time.time()
    name = str(data.get("name", "cell"))
    try:
        s = scenario_from_dict(data, source=source)
        if s.digest() != digest:  # pragma: no cover - plug-ins differ between processes
            raise RuntimeError(f"scenario digest changed in the worker ({s.digest()} != {digest})")
        result = run(s, out_dir=out_dir, store=store, progress=False, write=True, tag=tag)
        return "completed", result.to_dict(), None, time.time() - t0
    except RunFailed as e:  # the runner has already marked its row failed
        return "failed", None, str(e), time.time() - t0
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
        try:
            _record_failure(store, digest, name, out_dir, tag, reason, t0)
        except Exception:  # pragma: no cover - store unavailable
            traceback.print_exc()
        return "failed", None, reason, time.time() - t0


def run_grid(
    grid: Grid,
    *,
    store: str | Path,
    out_dir: str | Path,
    workers: int = 1,
    rerun: bool = False,
    progress: bool = True,
    report: bool = True,
    ray_address: str | None = None,
) -> GridRun:
    """Run every cell of ``grid`` not yet finished in ``store``; write the leaderboard.

    Parameters
    ----------
    grid
        An expanded grid (:func:`simulator.leaderboard.load_grid`).
    store
        The SQLite results store shared by all cells.
    out_dir
        The leaderboard folder; cells write to ``<out_dir>/cells/<label-path>-<digest[:8]>/``.
    workers
        Cells run in parallel (spawned processes); forced to 1 when a cell uses the Ray engine.
    rerun
        Recompute cells already finished in the store.
    progress
        Show a rich progress bar with an ETA and one line per cell (on stderr).
    report
        Write leaderboard.md / .csv / .html and the heatmaps into ``out_dir`` at the end.
    ray_address
        Run the cells as Ray tasks on this Ray cluster (``"auto"`` or the head's ``host:port``) instead of
        in local processes (:mod:`simulator.leaderboard.ray_dispatch`); the cells must use the inline engine
        and ``workers`` must stay 1.

    Returns
    -------
    GridRun
        One outcome per cell, in grid order.

    Raises
    ------
    RayDispatchError
        With ``ray_address``: ``workers > 1``, a cell to run uses another engine than inline, or no cluster
        answers at the address.
    """
    if ray_address is not None and workers > 1:
        raise RayDispatchError(
            f"workers = {workers} with ray_address {ray_address!r}: on a Ray cluster every cell is a Ray "
            "task and the cluster's CPUs set the parallelism; leave workers at 1"
        )
    out = Path(out_dir)
    store_p = Path(store)
    rs = ResultsStore(store_p)  # creates the schema once, before workers race for it
    tag = f"leaderboard:{grid.name}"
    if workers > 1 and any(c.scenario.simulation.engine == "ray" for c in grid.cells):
        workers = 1
        if progress:
            Console(stderr=True).print("[yellow]cells use the ray engine: running the grid with workers=1")
    outcomes: dict[str, CellOutcome] = {}
    todo: list[Cell] = []
    for cell in grid.cells:
        done = None if rerun else rs.finished(cell.digest)
        if done is not None:
            outcomes[cell.digest] = CellOutcome(cell, "skipped", summary=done)
        else:
            todo.append(cell)
    if ray_address is not None:
        check_cells(todo)  # before the progress bar: one message, nothing run

    console = bar = task = None
    if progress:
        console = Console(stderr=True)
        for c in grid.cells:
            if c.digest in outcomes:
                console.print(f"done (stored)  {c.label_path}  (finished in an earlier run)")
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        bar.start()
        task = bar.add_task(f"{grid.name} cells", total=len(grid.cells), completed=len(outcomes))

    def finish(
        cell: Cell, res: tuple[str, dict[str, Any] | None, str | None, float], node: str | None = None
    ) -> None:
        status, summary, reason, secs = res
        outcomes[cell.digest] = CellOutcome(
            cell,
            status,  # type: ignore[arg-type]
            summary=summary,
            reason=reason,
            seconds=secs,
        )
        if console is not None and bar is not None:
            if status == "completed" and summary is not None:
                m = cell_metrics(summary)  # whichever of MA, BA, PSNR, SSIM, label acc, ε the cell has
                parts = [
                    f"{x.header} {format_value(m[x.key], x.key)}"
                    for x in (*INTEGRITY_METRICS[:2], *PRIVACY_METRICS[1:])
                    if m[x.key] is not None
                ]
                where = f" on {node}" if node else ""
                metrics = "  ".join(parts) or "(no metric)"
                console.print(f"completed  {cell.label_path}  {metrics}  ({secs:.1f} s{where})")
            else:
                where = f" (on {node})" if node else ""
                console.print(f"[red]failed[/red]     {cell.label_path}: {reason}{where}")
            assert task is not None  # added together with the bar
            bar.advance(task)

    def args(cell: Cell) -> tuple[Any, ...]:
        cell_out = out / "cells" / cell.dirname
        return (cell.data, grid.source, cell.digest, str(cell_out), str(store_p), tag)

    try:
        if ray_address is not None:
            run_cells_on_ray(
                todo,
                address=ray_address,
                run_cell=_run_cell,
                out_dir=out,
                store=store_p,
                source=grid.source,
                tag=tag,
                finish=finish,
                console=console,
            )
        elif workers <= 1 or len(todo) <= 1:
            for cell in todo:
                finish(cell, _run_cell(*args(cell)))
        else:
            parallel = min(workers, len(todo))
            with cf.ProcessPoolExecutor(
                max_workers=parallel,
                mp_context=mp.get_context("spawn"),
                initializer=share_cpus,
                initargs=(max(1, (os.cpu_count() or 1) // parallel),),
            ) as pool:
                futs = {pool.submit(_run_cell, *args(c)): c for c in todo}
                for fut in cf.as_completed(futs):
                    cell = futs[fut]
                    try:
                        res = fut.result()
                    except Exception as e:
                        res = ("failed", None, f"worker died: {type(e).__name__}: {e}", 0.0)
                        with contextlib.suppress(Exception):
                            _record_failure(
                                str(store_p),
                                cell.digest,
                                str(cell.data.get("name")),
                                args(cell)[3],
                                tag,
                                res[2] or "",
                                0.0,
                            )
                    finish(cell, res)
    finally:
        if bar is not None:
            bar.stop()

    result = GridRun(
        grid=grid,
        out_dir=out,
        store=store_p,
        workers=workers,
        ray_address=ray_address,
        cells=[outcomes[c.digest] for c in grid.cells if c.digest in outcomes],
    )
    if report:
        write_reports(result)
    return result
