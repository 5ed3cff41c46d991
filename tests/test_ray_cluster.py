"""A two-node Ray cluster on this machine (issue 21): a scenario through ``simulation.ray_address`` gives the
inline engine's numbers, and a leaderboard dispatched as Ray tasks (``--ray-address``) survives the loss of
its worker node with every cell stored once and the earlier results untouched.

The cluster is two Ray nodes, one CPU each, each started by its own launcher process in its own session and
temporary folder (:func:`simulator.leaderboard.ray_dispatch.start_local_node`): the head (GCS + raylet) and a
worker (raylet). They keep 127.0.0.1 as their address, so every Ray server listens on the loopback only
(``ray start --node-ip-address=127.0.0.1`` would replace it with the machine's routable address);
``LOOPBACK_ENV`` makes the drivers (this process, the CLI, Flower's simulation process) join
``127.0.0.1:<port>`` as given. A node is stopped by SIGKILL to its launcher's process group (its raylet,
workers and agents, nothing else on the machine); ``ray stop`` is never used: it stops every Ray on the
machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from simulator import load_scenario
from simulator.cli import app
from simulator.leaderboard import load_grid, run_grid
from simulator.leaderboard.ray_dispatch import LOOPBACK_ENV, LocalNode, RayDispatchError, start_local_node
from simulator.runner import run

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "scenarios" / "quickstart.toml"
PRIVSIM = [sys.executable, "-c", "from simulator.cli import main; main()"]
WHERE = socket.gethostname()  # the progress lines name a cell's node as <host>/<node id[:8]>


@pytest.fixture(scope="module")
def head() -> Iterator[LocalNode]:
    node = start_local_node()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def worker(head: LocalNode) -> Iterator[LocalNode]:
    """A worker node joined to the head, for one test (test (b) kills it)."""
    node = start_local_node(head=head.address)
    try:
        yield node
    finally:
        node.stop()


TINY = [
    "data.dataset='digits'",
    "data.max_examples=600",
    "data.num_clients=3",
    "federation.clients_per_round=3",
    "federation.rounds=2",
    "federation.local_epochs=1",
    "model.name='mlp'",
    "model.params={hidden=[32]}",
]


def test_scenario_on_a_two_node_cluster_matches_inline(
    head: LocalNode, worker: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(a) engine = "ray" with ray_address = the cluster: the inline engine's main accuracy in every round."""
    for k, v in LOOPBACK_ENV.items():
        monkeypatch.setenv(k, v)  # Flower's simulation process joins 127.0.0.1:<port> as given
    inline = run(load_scenario(QUICKSTART, [*TINY, "simulation.engine='inline'"]), write=False)
    s = load_scenario(
        QUICKSTART, [*TINY, "simulation.engine='ray'", f"simulation.ray_address='{head.address}'"]
    )
    out = tmp_path / "ray-run"
    on_cluster = run(s, out_dir=out, store=tmp_path / "store.sqlite", write=True)
    a = [r.main_accuracy for r in inline.rounds]
    b = [r.main_accuracy for r in on_cluster.rounds]
    assert len(a) == len(b) == 2 and all(x is not None for x in a + b), (a, b)
    assert b == pytest.approx(a, abs=1e-6)
    # the clients ran on the cluster: the worker node (which only the cluster has) started Flower's actors
    logs = "\n".join(
        p.read_text(errors="replace") for p in worker.temp.glob("session_*/logs/python-core-worker-*.log")
    )
    assert "Actor creation task finished" in logs, "no Flower client actor ran on the worker node"


def _completed_rows(store: Path) -> list[tuple[Any, ...]]:
    if not store.exists():
        return []
    con = sqlite3.connect(store, timeout=30)
    try:
        return con.execute(
            "SELECT id, digest, status, finished_at, summary_json FROM runs "
            "WHERE status = 'completed' ORDER BY id"
        ).fetchall()
    except sqlite3.OperationalError:  # schema not created yet
        return []
    finally:
        con.close()


def _grid_file(tmp: Path) -> Path:
    """8 tiny cells (4 aggregators × 2 seeds, digits MLP, 3 rounds), one CPU each."""
    more = ["data.num_clients=4", "federation.clients_per_round=4", "federation.rounds=3"]
    keys = {o.split("=", 1)[0] for o in more}
    overrides = [
        *(o for o in TINY if o.split("=", 1)[0] not in keys),
        *more,
        "simulation.engine='inline'",
        "simulation.workers=1",
    ]
    defenses = ["fedavg", "median", "trimmed_mean", "krum"]
    text = "\n".join(
        [
            'name = "ray_grid"',
            'track = "integrity"',
            f"base = {json.dumps(str(QUICKSTART))}",
            f"overrides = {json.dumps(overrides)}",
            "[axes]",
            'attack = [{ label = "none" }]',
            "defense = ["
            + ", ".join(
                f'{{ label = "{d}", set = [{json.dumps(f"defenses.aggregator.name={d!r}")}] }}'
                for d in defenses
            )
            + "]",
            "seed = [0, 1]",
        ]
    )
    path = tmp / "ray_grid.toml"
    path.write_text(text + "\n")
    return path


def test_grids_that_cannot_run_on_a_cluster_are_refused_with_one_message(tmp_path: Path) -> None:
    """No cluster needed: the refusals come before any work, and nothing is written to the store."""
    grid_path = _grid_file(tmp_path)
    grid, store, out = load_grid(grid_path), tmp_path / "store.sqlite", tmp_path / "out"
    nowhere = "127.0.0.1:1"  # nothing listens on port 1
    with pytest.raises(RayDispatchError, match=r"workers = 2 with ray_address"):
        run_grid(grid, store=store, out_dir=out, workers=2, ray_address=nowhere, progress=False)
    on_ray = load_grid(grid_path, ["simulation.engine='ray'"])
    with pytest.raises(RayDispatchError, match=r"8 cell\(s\) use simulation.engine = 'ray'.*set simulation"):
        run_grid(on_ray, store=store, out_dir=out, ray_address=nowhere, progress=False)
    with pytest.raises(RayDispatchError, match=r"'127.0.0.1:1': nothing answers there"):
        run_grid(grid, store=store, out_dir=out, ray_address=nowhere, progress=False, report=False)
    assert _completed_rows(store) == []
    cli = CliRunner().invoke(
        app, ["leaderboard", "run", str(grid_path), "--store", str(store), "--ray-address", nowhere]
    )
    assert cli.exit_code == 2 and "nothing answers there" in cli.output and "Traceback" not in cli.output


def test_leaderboard_on_the_cluster_survives_losing_the_worker_node(
    head: LocalNode, worker: LocalNode, tmp_path: Path
) -> None:
    """(b) ``--ray-address``: SIGKILL the worker node while it runs a cell, after ≥ 1 cell is stored; the grid
    finishes with every cell stored exactly once and the rows stored before the kill unchanged."""
    grid_path = _grid_file(tmp_path)
    grid = load_grid(grid_path)
    n = len(grid.cells)
    assert n >= 6
    store, out = tmp_path / "store.sqlite", tmp_path / "out"
    cmd = [*PRIVSIM, "leaderboard", "run", str(grid_path), "--out", str(out), "--store", str(store)]
    env = {**os.environ, **LOOPBACK_ENV, "PYTHONPATH": str(ROOT), "COLUMNS": "240"}  # one line per cell
    log = tmp_path / "cli.err"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*cmd, "--ray-address", head.address],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
        try:
            before: list[tuple[Any, ...]] = []
            deadline = time.monotonic() + 420
            mine = f"on {WHERE}/{worker.node_id[:8]})"
            for _ in range(8400):  # until the worker node has stored a cell and runs another one's task
                before = _completed_rows(store)
                done_there = mine in log.read_text(errors="replace")
                busy = any(t.startswith("ray::privsim-cell") for t in worker.titles())
                if (before and done_there and busy) or proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, "the grid ended before the worker node could be killed"
            assert before and done_there and busy, (
                f"no kill point within 420 s: {len(before)} stored, on the worker: {done_there}, busy: {busy}"
            )
            worker.kill()
            before = _completed_rows(store)  # what the store held when the node died
            stdout, _ = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    stderr = log.read_text(errors="replace")
    assert proc.returncode == 0, stderr[-4000:]
    assert 1 <= len(before) < n, f"the kill should land between the first and the last cell: {len(before)}"
    assert f"{n} cells: {n} completed" in stdout.decode(), stdout.decode() + stderr[-3000:]

    after = _completed_rows(store)
    digests = [r[1] for r in after]
    assert sorted(digests) == sorted(c.digest for c in grid.cells)  # every cell, each once
    assert set(before) <= set(after)  # the rows stored before the kill: same id, time, summary
    con = sqlite3.connect(store)
    try:
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == n  # no failed or partial rows
        for run_id, *_ in after:
            assert con.execute("SELECT COUNT(*) FROM rounds WHERE run_id = ?", (run_id,)).fetchone()[0] == 3
    finally:
        con.close()
    # cells ran on both nodes, the last ones on the head; every cell's folder is where its summary says
    nodes = re.findall(r"completed .* on \S+/([0-9a-f]{8})\)", stderr)
    assert set(nodes) == {head.node_id[:8], worker.node_id[:8]} and nodes[-1] == head.node_id[:8], stderr
    for c in grid.cells:
        summary = json.loads((out / "cells" / c.dirname / "summary.json").read_text())
        assert summary["out_dir"] == str(out / "cells" / c.dirname)
        assert (out / "cells" / c.dirname / "rounds.csv").is_file()

    # the last cell to finish (the retried one, normally) has the numbers it has when run here, inline
    last = re.findall(r"completed  (\S+)  ", stderr)[-1]
    cell = next(c for c in grid.cells if c.label_path == last)
    here = [r.main_accuracy for r in run(cell.scenario, write=False).rounds]
    stored = json.loads(next(r[4] for r in after if r[1] == cell.digest))
    assert [r["main_accuracy"] for r in stored["rounds"]] == pytest.approx(here, abs=1e-6)

    # run again: every cell is read back from the store, nothing is dispatched (no cluster needed)
    again = subprocess.run(
        [*cmd, "--ray-address", "127.0.0.1:1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert _completed_rows(store) == after
