"""Leaderboard cells as Ray tasks on a Ray cluster (``privsim leaderboard run GRID --ray-address ADDR``).

How a grid runs on a cluster
----------------------------
1. The driver (the process that called :func:`simulator.leaderboard.run_grid`) joins the cluster with
   ``ray.init(address=ADDR)``; ``ADDR`` is ``"auto"`` (the cluster this machine belongs to, as
   ``ray start`` recorded it) or the head's ``host:port``.
2. Every cell not yet finished in the results store becomes one Ray task (:func:`cell_task`) that reserves
   one CPU (``simulation.workers`` CPUs when the cell sets it; a GPU when ``simulation.device`` is CUDA)
   and may be retried ``max_retries`` times: when the node running it dies, Ray runs it again on another
   node.
3. The task runs the cell with the leaderboard's cell runner (``simulator.leaderboard.runner._run_cell``:
   :func:`simulator.runner.run` with the inline engine) into a temporary folder and a private results store
   *on the task's node*, and sends everything back: the cell's status, summary, store rows and output files.
   A task killed half-way therefore leaves nothing behind anywhere the grid reads.
4. The driver waits on the tasks with ``ray.wait`` and, as each one finishes, writes the cell's files to
   ``<out_dir>/cells/<cell folder>/`` and then its run and rounds to the grid's SQLite store in one
   transaction: only the driver writes the store, each finished cell is written exactly once, and a cell is
   in the store only when it is complete. Killing the driver loses at most the cells still running; the next
   ``run_grid`` reads the stored cells back and dispatches only the others.

Local clusters (tests, benchmarks): :func:`start_local_node` starts one Ray node on this machine at
127.0.0.1, in its own process session, so that a two-node cluster can be built, timed and broken (a node
killed) without touching any other Ray on the machine. A real cluster is started with ``ray start`` (README,
"Ray cluster").

The nodes need the same privsim (and plug-ins) and the cells' data sets; a cell's digest is checked in the
task, so a node whose plug-ins resolve a scenario differently fails that cell instead of storing a wrong
result. Cells must use ``simulation.engine = "inline"``: a cell *is* one Ray task here, and does not start
Flower's Ray simulation inside it.

A task sets ``PRIVSIM_CPUS`` to the CPUs it reserved, so with ``simulation.workers`` unset the inline
engine's worker pool and the server's evaluation threads stay within them (one CPU unless the cell sets
``simulation.workers``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from simulator.flower.runtime import CPUS_ENV
from simulator.leaderboard.grid import Cell
from simulator.results import ResultsStore

__all__ = [
    "LOOPBACK_ENV",
    "MAX_RETRIES",
    "CellReply",
    "LocalNode",
    "RayDispatchError",
    "cell_task",
    "check_cells",
    "run_cells_on_ray",
    "start_local_node",
    "store_reply",
]

#: ``(status, summary, reason, seconds)``: what the leaderboard's cell runner returns for one cell
CellResult = tuple[str, dict[str, Any] | None, str | None, float]
#: the leaderboard's cell runner: ``(data, source, digest, out_dir, store, tag) -> CellResult``
RunCell = Callable[[dict[str, Any], str | None, str, str, str, str], CellResult]

MAX_RETRIES = 3  # Ray runs a task again this many times when its worker or node dies
_POLL_S = 2.0  # ray.wait's timeout: how often the driver looks at the cluster's nodes
_STALL_S = 600.0  # no live node with the CPUs a waiting cell needs for this long: the waiting cells fail


class RayDispatchError(ValueError):
    """The grid cannot run on the Ray cluster (bad cells, no cluster); the message says why and what to do."""


@dataclass
class CellReply:
    """What a cell's Ray task sends back to the driver.

    Attributes
    ----------
    status, summary, reason, seconds
        The cell runner's result: ``"completed"`` or ``"failed"``, summary.json's content, why it failed,
        its wall time.
    run
        The cell's row in the task's private results store (``ResultsStore.runs()`` columns), if any.
    rounds
        Its rounds there (``ResultsStore.rounds()``: summary.json's flat round records).
    files
        The cell's output folder: path relative to the folder → content.
    out_dir
        Where the task wrote that folder on its node (a temporary folder, gone by now).
    node
        ``host/node-id`` of the node that ran the task (the attempt that finished).
    """

    status: str
    summary: dict[str, Any] | None
    reason: str | None
    seconds: float
    run: dict[str, Any] | None
    rounds: list[dict[str, Any]]
    files: dict[str, bytes] = field(default_factory=dict)
    out_dir: str = ""
    node: str = ""


def check_cells(cells: Sequence[Cell]) -> None:
    """Raise :class:`RayDispatchError` naming the cells that cannot be one Ray task each (not inline)."""
    bad = [c for c in cells if c.scenario.simulation.engine != "inline"]
    if bad:
        engines = sorted({c.scenario.simulation.engine for c in bad})
        names = ", ".join(c.label_path for c in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise RayDispatchError(
            f"{len(bad)} cell(s) use simulation.engine = {' / '.join(repr(e) for e in engines)} ({names}): "
            "with --ray-address every cell runs as one Ray task with the inline engine; set "
            "simulation.engine = 'inline' for the grid (e.g. --set simulation.engine=\"inline\")"
        )


def _task_resources(cell: Cell) -> tuple[float, float]:
    """``(num_cpus, num_gpus)`` a cell's task reserves."""
    sim = cell.scenario.simulation
    return float(sim.workers or 1), (1.0 if sim.device.startswith("cuda") else 0.0)


def _read_run(store: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The last run in a (private, one-cell) store and its rounds."""
    if not store.exists():
        return None, []
    rs = ResultsStore(store)
    runs = rs.runs()
    if not runs:
        return None, []
    run = runs[-1]
    return run, rs.rounds(int(run["id"]))


def cell_task(
    run_cell: RunCell, data: dict[str, Any], source: str | None, digest: str, dirname: str, tag: str
) -> CellReply:
    """The body of a cell's Ray task (runs in a Ray worker on any node of the cluster).

    Runs ``run_cell`` into a temporary folder with a private results store, and returns the outcome with the
    store's rows and the folder's files (:class:`CellReply`); nothing is left on the node.
    """
    # deferred: Ray is loaded in the driver only for --ray-address; here it is already loaded (a Ray worker)
    import ray

    rc = ray.get_runtime_context()
    node = f"{socket.gethostname()}/{rc.get_node_id()[:8]}"
    # the cell may use the CPUs its task reserved, no more (the engine's automatic worker and thread counts)
    os.environ[CPUS_ENV] = str(max(1, int(rc.get_assigned_resources().get("CPU", 1))))
    with tempfile.TemporaryDirectory(prefix="privsim-cell-") as tmp:
        out = Path(tmp) / dirname
        store = Path(tmp) / "store.sqlite"
        status, summary, reason, seconds = run_cell(data, source, digest, str(out), str(store), tag)
        run, rounds = _read_run(store)
        files = (
            {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
            if out.is_dir()
            else {}
        )
    return CellReply(status, summary, reason, seconds, run, rounds, files, str(out), node)


def _relocate_text(text: str, old: str, new: str) -> str:
    return text.replace(old, new) if old else text


def _relocate_json(obj: Any, old: str, new: str) -> Any:
    """``obj`` with every occurrence of the path ``old`` in its strings replaced by ``new``."""
    if not old:
        return obj
    enc = json.dumps  # the paths as they appear inside a JSON document
    return json.loads(json.dumps(obj).replace(enc(old)[1:-1], enc(new)[1:-1]))


def store_reply(
    reply: CellReply, *, cell: Cell, store: Path, cell_out: Path, tag: str
) -> tuple[CellResult, str]:
    """Write a finished task's cell to the driver's side: its files into ``cell_out``, then its run and rounds
    into ``store`` in one transaction (paths of the task's temporary folder rewritten to ``cell_out``).

    Returns
    -------
    tuple
        The cell runner's result as the driver records it, and the node that ran the cell.
    """
    old, new = reply.out_dir, str(cell_out)
    for rel, content in reply.files.items():
        dest = cell_out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            dest.write_text(_relocate_text(content.decode("utf-8"), old, new), encoding="utf-8")
        except UnicodeDecodeError:  # images
            dest.write_bytes(content)
    summary = _relocate_json(reply.summary, old, new) if reply.summary is not None else None
    if reply.run is None:  # the task could not even open its store: record the failure here
        rs = ResultsStore(store)
        rs.fail_run(
            rs.start_run(digest=cell.digest, name=cell.scenario.name, out_dir=new, tag=tag),
            reply.reason or "the cell's task returned no run",
        )
        return ("failed", None, reply.reason, reply.seconds), reply.node
    r = reply.run
    ResultsStore(store)  # the schema
    con = sqlite3.connect(store, timeout=60)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        with con:  # one transaction: the run with all its rounds, or nothing
            cur = con.execute(
                "INSERT INTO runs(digest, name, started_at, finished_at, status, final_main_accuracy, "
                "final_backdoor_accuracy, out_dir, tag, summary_json) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    r["digest"],
                    r["name"],
                    r["started_at"],
                    r["finished_at"],
                    r["status"],
                    r["final_main_accuracy"],
                    r["final_backdoor_accuracy"],
                    new,
                    r["tag"],
                    json.dumps(summary) if summary is not None and reply.status == "completed" else None,
                ),
            )
            con.executemany(
                "INSERT INTO rounds(run_id, round, main_accuracy, record_json) VALUES (?,?,?,?)",
                [
                    (cur.lastrowid, rec["round"], rec.get("main_accuracy"), json.dumps(rec))
                    for rec in reply.rounds
                ],
            )
    finally:
        con.close()
    return (reply.status, summary, reply.reason, reply.seconds), reply.node


def _probe(address: str, timeout: float = 10.0) -> None:
    """Fail fast when nothing listens at ``host:port`` (``ray.init`` would retry for minutes)."""
    if address == "auto":
        return  # Ray reads the address ray start recorded on this machine (or RAY_ADDRESS)
    host, sep, port = address.replace("ray://", "").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayDispatchError(
            f"--ray-address {address!r}: give 'auto' or the head's host:port (e.g. 10.0.0.5:6379)"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise RayDispatchError(
            f"--ray-address {address!r}: nothing answers there ({e.strerror or e}). Is the head up "
            "(`ray start --head`, `ray status` on the head) and its port open to this machine?"
        ) from None


def _connect(address: str) -> None:
    _probe(address)
    # deferred: Ray is loaded only for --ray-address (its import takes seconds)
    import ray

    if ray.is_initialized():
        raise RayDispatchError(
            "this process is already connected to Ray (ray.init was called before); call ray.shutdown() "
            "first, so that the grid joins the cluster given by ray_address"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Ray's note on accelerator variables
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        why = str(e).strip().splitlines()
        raise RayDispatchError(
            f"--ray-address {address!r}: cannot join a Ray cluster ({type(e).__name__}: "
            f"{why[-1] if why else ''}). Start one with `ray start --head` and give 'auto' on a machine of "
            "the cluster, or the head's host:port (see README, Ray cluster)"
        ) from None


def _alive() -> dict[str, dict[str, Any]]:
    # deferred: loaded by _connect already
    import ray

    return {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}


def _node_name(n: dict[str, Any]) -> str:
    return f"{n.get('NodeManagerHostname') or n.get('NodeManagerAddress')}/{n['NodeID'][:8]}"


def run_cells_on_ray(
    cells: Sequence[Cell],
    *,
    address: str,
    run_cell: RunCell,
    out_dir: Path,
    store: Path,
    source: str | None,
    tag: str,
    finish: Callable[[Cell, CellResult, str | None], None],
    console: Console | None = None,
    max_retries: int = MAX_RETRIES,
    poll_s: float = _POLL_S,
    stall_s: float = _STALL_S,
) -> None:
    """Run ``cells`` as Ray tasks on the cluster at ``address``; store each as its task finishes.

    Parameters
    ----------
    cells
        The cells to run (not yet finished in ``store``); every one must use the inline engine.
    address
        ``"auto"`` or the head's ``host:port``.
    run_cell
        The leaderboard's cell runner (:func:`simulator.leaderboard.runner._run_cell`), run in the tasks.
    out_dir
        The leaderboard folder; cell ``c`` is written to ``out_dir / "cells" / c.dirname``.
    store
        The grid's results store; only this process writes it.
    source, tag
        The grid file (for the cells' relative paths) and the store tag of the grid's runs.
    finish
        Called in this process once per cell, with its result and the node that ran it (``None`` if none
        did), right after the cell is stored.
    console
        Where to say which nodes the cluster has and when one leaves.
    max_retries
        Ray re-runs a task whose worker or node died this many times.
    poll_s, stall_s
        How often to look at the cluster's nodes while waiting; the waiting cells fail after ``stall_s``
        seconds without a live node that has the CPUs they need.

    Raises
    ------
    RayDispatchError
        A cell uses another engine, or there is no cluster at ``address``.
    """
    check_cells(cells)
    if not cells:
        return
    _connect(address)
    # deferred: loaded by _connect already
    import ray

    def fail(cell: Cell, reason: str, node: str | None = None) -> None:
        rs = ResultsStore(store)
        rs.fail_run(
            rs.start_run(
                digest=cell.digest,
                name=cell.scenario.name,
                out_dir=str(out_dir / "cells" / cell.dirname),
                tag=tag,
            ),
            reason,
        )
        finish(cell, ("failed", None, reason, 0.0), node)

    try:
        nodes = _alive()
        cpus = sum(n["Resources"].get("CPU", 0.0) for n in nodes.values())
        if console is not None:
            console.print(
                f"Ray cluster {address}: {len(nodes)} node(s), {cpus:g} CPU(s); {len(cells)} cell(s) to run"
            )
        task = ray.remote(cell_task)
        pending: dict[Any, Cell] = {}
        for cell in cells:
            ncpu, ngpu = _task_resources(cell)
            biggest = max((n["Resources"].get("CPU", 0.0) for n in nodes.values()), default=0.0)
            gpus = max((n["Resources"].get("GPU", 0.0) for n in nodes.values()), default=0.0)
            if ncpu > biggest or ngpu > gpus:
                fail(
                    cell,
                    f"the cell needs {ncpu:g} CPU(s) and {ngpu:g} GPU(s) on one node (simulation.workers, "
                    f"simulation.device); the largest Ray node has {biggest:g} CPU(s), {gpus:g} GPU(s)",
                )
                continue
            ref = task.options(
                num_cpus=ncpu, num_gpus=ngpu, max_retries=max_retries, name=f"privsim-cell:{cell.label_path}"
            ).remote(run_cell, cell.data, source, cell.digest, cell.dirname, tag)
            pending[ref] = cell

        stalled_since: float | None = None
        last_look = time.monotonic()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll_s)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    reply = ray.get(ref)
                except ray.exceptions.RayError as e:  # retries used up, or the task could not start
                    lines = str(e).strip().splitlines()
                    fail(cell, f"Ray task failed: {type(e).__name__}: {lines[-1] if lines else ''}")
                    continue
                result, node = store_reply(
                    reply, cell=cell, store=store, cell_out=out_dir / "cells" / cell.dirname, tag=tag
                )
                finish(cell, result, node)
            if not pending or time.monotonic() - last_look < poll_s:
                continue
            last_look = time.monotonic()
            now = _alive()
            if console is not None:
                for nid in nodes.keys() - now.keys():
                    console.print(f"[yellow]Ray node {_node_name(nodes[nid])} left; its cells are retried")
                for nid in now.keys() - nodes.keys():
                    console.print(f"Ray node {_node_name(now[nid])} joined the cluster")
            nodes = now
            biggest = max((n["Resources"].get("CPU", 0.0) for n in nodes.values()), default=0.0)
            if biggest >= min(_task_resources(c)[0] for c in pending.values()):
                stalled_since = None
            elif stalled_since is None:
                stalled_since = time.monotonic()
            elif time.monotonic() - stalled_since > stall_s:
                for ref, cell in list(pending.items()):
                    with contextlib.suppress(Exception):  # the task may have ended meanwhile
                        ray.cancel(ref, force=True)
                    fail(cell, f"no live Ray node with the CPUs this cell needs for {stall_s:g} s")
                pending.clear()
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------------------
# Local clusters (tests, benchmarks)
# ---------------------------------------------------------------------------------------------------------

#: The environment under which Ray keeps 127.0.0.1 as an address (nodes and drivers joining a local node);
#: otherwise Ray replaces a loopback address with the machine's routable one
#: (``ray._private.services.resolve_ip_for_localhost``) and its servers listen on every interface.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

# One Ray node (what `ray start` does, through ray._private.node.Node as ray.cluster_utils.Cluster does, but
# at 127.0.0.1): start it, wait until the GCS lists it, write {address, node_id, raylet} to the info file,
# then live until the process group is killed, the parent goes away, or `life` seconds have passed.
_NODE = r"""
import json, os, sys, time
from ray._private import services
from ray._private.node import Node
from ray._private.parameter import RayParams

kind, temp, info, gcs, cpus, life = sys.argv[1:7]
kw = dict(node_ip_address="127.0.0.1", num_cpus=int(cpus), num_gpus=0, object_store_memory=100 * 2**20,
          temp_dir=temp, include_dashboard=False, min_worker_port=0, max_worker_port=0, node_manager_port=0)
if kind == "worker":
    kw.update(gcs_address=gcs, include_log_monitor=False)
params = RayParams(**kw)
params.dashboard_agent_listen_port = None  # a free port, not Ray's fixed default
node = Node(params, head=kind == "head", shutdown_at_exit=False, spawn_reaper=False)
services.wait_for_node(node.gcs_address, node.plasma_store_socket_name, 120)
raylet = node.all_processes["raylet"][0].process.pid
with open(info + ".tmp", "w") as f:
    json.dump({"address": node.gcs_address, "node_id": node.node_id, "raylet": raylet}, f)
os.replace(info + ".tmp", info)
parent, end = os.getppid(), time.monotonic() + float(life)
while time.monotonic() < end and os.getppid() == parent:
    time.sleep(1.0)
node.kill_all_processes(check_alive=False, allow_graceful=False)
"""


@dataclass
class LocalNode:
    """A Ray node on this machine started by :func:`start_local_node`: a launcher process that leads its own
    session and process group, with the node's GCS (head only), raylet, agents and workers in it.

    Attributes
    ----------
    proc
        The launcher.
    temp
        The node's Ray temp folder (its session, sockets and logs).
    address
        The cluster's GCS address, ``127.0.0.1:<port>`` (what ``--ray-address`` takes).
    node_id, raylet
        The node's Ray id and its raylet's pid.
    """

    proc: subprocess.Popen[bytes]
    temp: Path
    address: str
    node_id: str
    raylet: int

    def pids(self) -> list[int]:
        """The node's live processes (those in the launcher's session; Linux ``/proc``)."""
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == self.proc.pid and fields[0] != "Z":  # session id; not a zombie
                pids.append(int(d))
        return pids

    def titles(self) -> list[str]:
        """The node's processes' command lines (a Ray worker running a task shows ``ray::<task name>``)."""
        out = []
        for pid in self.pids():
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
        return out

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL the node: its launcher's process group, and whatever is left in its session."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.1) + 1):
            left = self.pids()
            if not left or time.monotonic() > deadline:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def stop(self) -> None:
        """Kill the node and remove its temp folder."""
        self.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


def start_local_node(
    *,
    head: str | None = None,
    num_cpus: int = 1,
    timeout: float = 240.0,
    life: float = 3600.0,
    env: Mapping[str, str] | None = None,
) -> LocalNode:
    """Start a Ray node on this machine at 127.0.0.1 (tests, benchmarks; a real cluster uses ``ray start``).

    Parameters
    ----------
    head
        ``None``: a head node (a new cluster); else the head's address: a worker node joining it.
    num_cpus
        The CPUs the node offers.
    timeout
        Seconds to wait for the node to be up (RuntimeError with the launcher's log otherwise).
    life
        Seconds after which the node stops by itself (it also stops when this process exits).
    env
        Extra environment for the node's processes (:data:`LOOPBACK_ENV` is always set).

    Returns
    -------
    LocalNode
        The node; ``node.stop()`` ends it.
    """
    temp = Path(tempfile.mkdtemp(prefix="psray-"))  # short: Ray's socket paths must stay < 108 bytes
    info = temp / "node.json"
    kind = "head" if head is None else "worker"
    full = {**os.environ, **(env or {}), **LOOPBACK_ENV}
    with open(temp / "launcher.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _NODE, kind, str(temp), str(info), head or "", str(num_cpus), str(life)],
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.2) + 1):
        if info.exists() or proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not info.exists():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        tail = (temp / "launcher.log").read_text(errors="replace")[-3000:]
        shutil.rmtree(temp, ignore_errors=True)
        raise RuntimeError(f"Ray {kind} node did not start within {timeout:.0f} s:\n{tail}")
    d = json.loads(info.read_text())
    return LocalNode(proc, temp, d["address"], d["node_id"], int(d["raylet"]))
