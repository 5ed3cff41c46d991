"""Leaderboard (issue 9): grid expansion, ranking score, CLI run, resume after SIGKILL, sortable HTML."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from simulator import load_scenario
from simulator.leaderboard import GridError, grid_from_dict, load_grid, ranking_scores
from simulator.leaderboard.report import CellOutcome as Outcome
from simulator.leaderboard.report import (
    cell_metrics,
    cell_records,
    leaderboard_table,
    render_html,
    render_markdown,
)
from tests.helpers.chromium import dump_dom

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scenarios" / "leaderboard_smoke.toml"
QUICKSTART = ROOT / "scenarios" / "quickstart.toml"
PRIVSIM = [sys.executable, "-c", "from simulator.cli import main; main()"]


def _grid(axes: dict[str, Any], **top: Any):
    raw = {
        "name": "g",
        "track": "integrity",
        "base": str(QUICKSTART),
        "overrides": ["federation.rounds=2", "simulation.engine='inline'"],
        "axes": axes,
        **top,
    }
    return grid_from_dict(raw, source="g.toml")


AXES = {
    "defense": [
        {"label": "fedavg", "set": ["defenses.aggregator.name='fedavg'"]},
        {"label": "median", "set": ["defenses.aggregator.name='median'"]},
    ],
    "alpha": [
        {"label": "0.5", "set": ["data.partitioner.params.alpha=0.5"]},
        {"label": "1.0", "set": ["data.partitioner.params.alpha=1.0"]},
    ],
    "seed": [0, 7],
}


def test_grid_expansion_cells_labels_overrides_and_digests() -> None:
    g = _grid(AXES)
    assert len(g.cells) == 8
    assert [c.label_path for c in g.cells][:3] == ["fedavg-0.5-0", "fedavg-0.5-7", "fedavg-1.0-0"]
    for c in g.cells:
        s = c.scenario
        assert s.federation.rounds == 2 and s.simulation.engine == "inline"  # grid overrides
        assert s.defenses.aggregator.name == c.labels["defense"]
        assert s.data.partitioner.params["alpha"] == float(c.labels["alpha"])
        assert s.seed == int(c.labels["seed"])
        assert s.name == f"g.{c.label_path}"
        assert c.dirname == f"{c.label_path}-{c.digest[:8]}"
    digests = [c.digest for c in g.cells]
    assert len(set(digests)) == 8
    assert [c.digest for c in _grid(AXES).cells] == digests  # stable across expansions


def test_smoke_grid_file_expands() -> None:
    g = load_grid(SMOKE)
    assert len(g.cells) == 4 and g.track == "integrity"
    assert {c.scenario.defenses.aggregator.name for c in g.cells} == {"fedavg", "median"}
    assert all(c.scenario.simulation.engine == "inline" for c in g.cells)


@pytest.mark.parametrize(
    "file", ["sketch_grid.toml", "backdoor_defense_grid.toml", "dp_grid.toml", "leakage_noise_grid.toml"]
)
def test_every_grid_file_expands_into_valid_scenarios(file: str) -> None:
    g = load_grid(Path("scenarios") / file)
    assert g.cells and len({c.digest for c in g.cells}) == len(g.cells)


def test_grid_overrides_from_the_command_line_reach_every_cell() -> None:
    g = load_grid(Path("scenarios/backdoor_defense_grid.toml"), ["model.name='mlp'", "federation.rounds=3"])
    assert {(c.scenario.model.name, c.scenario.federation.rounds) for c in g.cells} == {("mlp", 3)}
    # the grid's own overrides stay in force: every cell starts from the same 20-round warm start
    assert {c.scenario.model.warm_start.rounds for c in g.cells} == {20}
    # its edge-case PGD cells carry the attack of scenarios/backdoor_edge_pgd.toml
    ref = load_scenario("scenarios/backdoor_edge_pgd.toml").attacks
    pgd = [c.scenario.attacks for c in g.cells if c.labels["attack"] == "pgd"]
    assert pgd and all(a.backdoor == ref.backdoor and a.plan.malicious == ref.plan.malicious for a in pgd)


def test_full_integrity_grid_expands_every_cell_into_a_valid_scenario() -> None:
    """scenarios/leaderboard.toml is too long to run in CI; every cell must at least validate."""
    from attacks import CLIENT_ATTACKS
    from defenses import AGGREGATORS

    g = load_grid(Path("scenarios/leaderboard.toml"))
    assert g.track == "integrity"
    assert len({c.digest for c in g.cells}) == len(g.cells)
    defenses = {c.scenario.defenses.aggregator.name for c in g.cells}
    assert "fedavg" in defenses and len(defenses) >= 10 and defenses <= set(AGGREGATORS.names())
    used: set[str] = set()
    for c in g.cells:
        spec = c.scenario.attacks.backdoor
        name, params = (spec.name, dict(spec.params)) if spec is not None else (None, {})
        while name is not None:  # a wrapper (model_replacement, pgd ...) and the attacks it wraps
            used.add(name)
            base = params.get("base")
            name, params = (
                (base, {})
                if isinstance(base, str)
                else ((base["name"], dict(base.get("params", {}))) if isinstance(base, dict) else (None, {}))
            )
    assert len(used) >= 5 and used <= set(CLIENT_ATTACKS.names())  # a new attack is not forced into the grid


def test_bad_grid_names_axis_entry_and_field() -> None:
    axes = {
        "defense": [
            {"label": "fedavg", "set": ["defenses.aggregator.name='fedavg'"]},
            {"label": "typo", "set": ["defenses.aggregator.name='medain'"]},
        ],
        "rounds": [{"label": "r", "set": ["federation.roundz=3"]}],
    }
    with pytest.raises(GridError) as e:
        _grid(axes)
    msg = str(e.value)
    assert "axis 'defense' entry 'typo': defenses.aggregator.name" in msg and "median" in msg
    assert "axis 'rounds' entry 'r': federation.roundz" in msg
    assert msg.count("entry 'typo'") == 1  # each problem once, not once per cell

    with pytest.raises(GridError, match=r"axis 'seed' entry #2: expected a table"):
        _grid({"seed": [0, "one"]})
    with pytest.raises(GridError, match=r"axis 'defense': label 'a' appears twice"):
        _grid({"defense": [{"label": "a"}, {"label": "a"}]})
    with pytest.raises(GridError, match=r"base: scenario file .* not found"):
        grid_from_dict({"name": "g", "base": "nope.toml", "axes": {"seed": [0]}}, source="g.toml")
    with pytest.raises(GridError, match=r"resolve to the same scenario"):
        _grid({"defense": [{"label": "a"}, {"label": "b"}]})


def test_cli_bad_grid_one_message_no_traceback(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from simulator.cli import app

    bad = tmp_path / "bad.toml"
    bad.write_text(
        f'name = "b"\nbase = "{QUICKSTART}"\n[axes]\n'
        "defense = [{label = 'x', set = [\"defenses.aggregator.name='krumm'\"]}]\n"
    )
    res = CliRunner().invoke(
        app,
        ["leaderboard", "run", str(bad), "--out", str(tmp_path / "o"), "--store", str(tmp_path / "s.sqlite")],
    )
    assert res.exit_code == 2
    assert "axis 'defense' entry 'x': defenses.aggregator.name: unknown aggregator 'krumm'" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "s.sqlite").exists()


def test_ranking_score_on_hand_made_numbers() -> None:
    def rec(row: str, col: str, seed: int, ma: float | None, ba: float | None = None) -> dict[str, Any]:
        return {
            "row": row,
            "col": col,
            "others": (("seed", str(seed)),),
            "main_accuracy": ma,
            "backdoor_accuracy": ba,
        }

    records = [
        rec("fedavg", "none", 0, 0.80),
        rec("fedavg", "badnets", 0, 0.80, 0.90),
        rec("fedavg", "badnets", 1, 0.50, 0.50),
        rec("median", "none", 0, 0.84),
        rec("median", "badnets", 0, 0.76, 0.09),
        rec("median", "badnets", 1, 0.50, 0.50),
        rec("krum", "none", 0, 0.40),
        rec("krum", "badnets", 0, None, 0.1),  # MA missing: pair left out
        rec("lonely", "dba", 0, 0.9, 0.1),  # no fedavg cell for this attack
    ]
    s = ranking_scores(records, baseline="fedavg")
    assert s["fedavg"] == pytest.approx(0.0)
    # none: +0.05; badnets: mean over seeds of [(-0.05) - (-0.9)] = 0.85 and [0 - 0] = 0 -> 0.425
    assert s["median"] == pytest.approx(0.05 + 0.425)
    assert s["krum"] == pytest.approx(-0.5)
    assert s["lonely"] is None


def test_missing_metrics_render_as_dash() -> None:
    assert all(v is None for v in cell_metrics({}).values())
    assert all(v is None for v in cell_metrics(None).values())
    m = cell_metrics(
        {
            "final": {"main_accuracy": 0.5, "backdoor_accuracy": float("nan")},
            "defense": {"tpr": 1.0},
            "inversion": "n/a",
            "privacy": {"epsilon": 3.0},
        }
    )
    assert m["main_accuracy"] == 0.5 and m["backdoor_accuracy"] is None and m["tpr"] == 1.0
    assert m["psnr"] is None and m["epsilon"] == 3.0
    g = load_grid(SMOKE)
    outs = [Outcome(c, "completed", {"final": {}}) for c in g.cells]
    md = render_markdown(g, leaderboard_table(g, cell_records(g, outs)), cell_records(g, outs))
    assert "| fedavg | – | – | n/a | n/a | – |" in md  # FedAvg never leaves a client out: no detection rates


# ---------------------------------------------------------------- running the smoke grid


def _completed_rows(store: Path) -> list[tuple[Any, ...]]:
    if not store.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(
                "SELECT id, digest, status, finished_at, summary_json FROM runs "
                "WHERE status='completed' ORDER BY id"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError:  # schema not created yet
        return []


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Start the smoke grid, SIGKILL it after ≥ 1 finished cell, run it again to the end."""
    tmp = tmp_path_factory.mktemp("leaderboard")
    store, out = tmp / "store.sqlite", tmp / "out"
    cmd = [*PRIVSIM, "leaderboard", "run", str(SMOKE), "--out", str(out), "--store", str(store)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    n = len(load_grid(SMOKE).cells)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 240
    before: list[tuple[Any, ...]] = []
    try:
        while time.time() < deadline and proc.poll() is None:
            before = _completed_rows(store)
            if before:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _completed_rows(store)  # what the store holds after the kill
    assert 1 <= len(before) < n, (
        f"kill should land between the first and the last cell, got {len(before)}/{n}"
    )
    t0 = time.time()
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    return {"store": store, "out": out, "before": before, "rerun": rerun, "n": n, "rerun_s": time.time() - t0}


def test_resume_after_sigkill_skips_finished_cells(smoke_run: dict[str, Any]) -> None:
    rerun, before, n = smoke_run["rerun"], smoke_run["before"], smoke_run["n"]
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    k = len(before)
    assert f"{n} cells: {n - k} completed, {k} done (stored)" in rerun.stdout
    assert rerun.stderr.count("done (stored)  ") == k
    after = _completed_rows(smoke_run["store"])
    digests = [r[1] for r in after]
    assert sorted(digests) == sorted(c.digest for c in load_grid(SMOKE).cells)  # every cell once
    assert len(set(digests)) == len(digests) == n
    assert set(before) <= set(after)  # finished rows untouched: same id, finished_at, summary


def test_cli_run_writes_md_csv_html_png(smoke_run: dict[str, Any]) -> None:
    out: Path = smoke_run["out"]
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.html", "heatmap_main_accuracy.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "heatmap_main_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "leaderboard.md").read_text()
    assert re.search(r"\| fedavg \| \**\d\.\d{4}\**? \| – \|", md), md
    assert "| defense | none MA | none BA | TPR | FPR | score |" in md
    assert md.count("**") >= 2  # best per column in bold
    lines = (out / "leaderboard.csv").read_text().splitlines()
    assert lines[0].startswith("attack,defense,seed,status,reason,digest,main_accuracy,backdoor_accuracy")
    assert len(lines) == 1 + smoke_run["n"]
    for c in load_grid(SMOKE).cells:
        assert (out / "cells" / c.dirname / "summary.json").is_file()
    html = (out / "leaderboard.html").read_text()
    assert "data:image/png;base64," in html and "accuracy.png" in html


def test_cli_show_prints_tables(smoke_run: dict[str, Any]) -> None:
    res = subprocess.run(
        [*PRIVSIM, "leaderboard", "show", str(SMOKE), "--store", str(smoke_run["store"])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
    )
    assert res.returncode == 0, res.stderr
    assert "fedavg" in res.stdout and "median" in res.stdout and "score" in res.stdout
    assert "not run" not in res.stdout


# ---------------------------------------------------------------- HTML sorting in headless Chromium


def _dump_dom(page: Path, query: str, tmp: Path) -> str:
    """The page's DOM in headless Chromium (skips locally, fails under CI, when there is none)."""
    return dump_dom(f"file://{page}?{query}", tmp / "chrome-profile")


def _column(dom: str, table_id: str, key: str) -> tuple[str | None, list[str]]:
    """(the table's data-sorted attribute, the data-value of column ``key`` in row order) from a DOM dump."""
    m = re.search(rf'<table id="{table_id}"[^>]*>(.*?)</table>', dom, re.S)
    assert m, f"table {table_id} not in the page"
    sorted_attr = re.search(r'data-sorted="([^"]*)"', m.group(0)[:300])
    headers = re.findall(r'<th[^>]*data-key="([^"]*)"', m.group(1))
    j = headers.index(key)
    rows = re.findall(r"<tr data-(?:cell|row)=[^>]*>(.*?)</tr>", m.group(1), re.S)
    col = []
    for r in rows:
        tds = re.findall(r"<td([^>]*)>", r)
        v = re.search(r'data-value="([^"]*)"', tds[j])
        col.append(v.group(1) if v else "")
    return (sorted_attr.group(1) if sorted_attr else None), col


def test_html_header_click_sorts_numerically(tmp_path: Path) -> None:
    g = load_grid(SMOKE)
    values = [9.0, None, 100.0, 10.0]  # unsorted; string order would put "100" before "9"
    outs = [Outcome(c, "completed", {"final": {"main_accuracy": v}}) for c, v in zip(g.cells, values)]
    recs = cell_records(g, outs)
    page = tmp_path / "leaderboard.html"
    page.write_text(render_html(g, leaderboard_table(g, recs), recs, tmp_path))
    attr, col = _column(_dump_dom(page, "", tmp_path), "cells", "main_accuracy")
    assert attr is None and col == ["9.0", "", "100.0", "10.0"]  # no sort without a query
    attr, col = _column(_dump_dom(page, "table=cells&sort=main_accuracy", tmp_path), "cells", "main_accuracy")
    assert attr == "main_accuracy:asc" and col == ["9.0", "10.0", "100.0", ""]
    attr, col = _column(
        _dump_dom(page, "table=cells&sort=main_accuracy&dir=desc", tmp_path), "cells", "main_accuracy"
    )
    assert attr == "main_accuracy:desc" and col == ["100.0", "10.0", "9.0", ""]


def test_html_of_smoke_run_sorts_by_accuracy(smoke_run: dict[str, Any], tmp_path: Path) -> None:
    page = smoke_run["out"] / "leaderboard.html"
    for d in ("asc", "desc"):
        attr, col = _column(
            _dump_dom(page, f"table=cells&sort=main_accuracy&dir={d}", tmp_path), "cells", "main_accuracy"
        )
        nums = [float(x) for x in col]
        assert attr == f"main_accuracy:{d}" and len(nums) == smoke_run["n"]
        assert nums == sorted(nums, reverse=d == "desc")
    summary = json.loads(
        (smoke_run["out"] / "cells" / load_grid(SMOKE).cells[0].dirname / "summary.json").read_text()
    )
    assert summary["status"] == "completed"


def test_failed_cells_are_recorded_and_the_grid_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import simulator.leaderboard.runner
    import simulator.runner
    from simulator.leaderboard import run_grid
    from simulator.results import ResultsStore

    calls: list[str] = []

    def broken_run(s: Any, *, out_dir: Any = None, store: Any = None, tag: Any = None, **_: Any) -> Any:
        calls.append(s.name)
        if s.seed == 0:  # dies after the runner opened its store row
            ResultsStore(store).start_run(digest=s.digest(), name=s.name, out_dir=str(out_dir), tag=tag)
            raise ValueError("boom")
        raise simulator.runner.RunFailed(f"{s.name}: budget")

    monkeypatch.setattr(simulator.leaderboard.runner, "run", broken_run)
    g = _grid({"seed": [0, 1]})
    res = run_grid(g, store=tmp_path / "s.sqlite", out_dir=tmp_path / "out", progress=False)
    assert calls == ["g.0", "g.1"]
    assert [(c.status, c.reason) for c in res.cells] == [
        ("failed", "ValueError: boom"),
        ("failed", "g.1: budget"),
    ]
    rows = ResultsStore(tmp_path / "s.sqlite").runs()
    assert [r["status"] for r in rows] == [
        "failed: ValueError: boom"
    ]  # the stale 'running' row marked failed
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "0 run now, 0 done (stored), 2 failed" in md and "ValueError: boom" in md
    assert (tmp_path / "out" / "leaderboard.html").is_file() and (
        tmp_path / "out" / "leaderboard.csv"
    ).is_file()


# ------------------------------------------------------------- curves: a metric vs a numeric defense strength


def _noise_grid(sigmas: list[str], iterations: int = 3, **axes: Any):
    entries = [
        {
            "label": v,
            **(
                {"set": [f"defenses.client=[{{name='gaussian_noise', params={{sigma={v}}}}}]"]}
                if float(v) > 0
                else {}
            ),
        }
        for v in sigmas
    ]
    raw = {
        "name": "noise",
        "track": "privacy",
        "base": str(ROOT / "scenarios" / "leakage_ig.toml"),
        "rows": "payload",
        "columns": "sigma",
        "overrides": [
            f"attacks.inversion.params.iterations={iterations}",
            "attacks.inversion.params.restarts=1",
        ],
        "axes": {"payload": [{"label": "gradient"}], "sigma": entries, **axes},
    }
    return grid_from_dict(raw, source="noise.toml")


def test_numeric_column_labels_are_read_as_numbers() -> None:
    from simulator.leaderboard.report import numeric_columns

    assert numeric_columns(["0", "1e-4", "0.25", "3"]) == [0.0, 1e-4, 0.25, 3.0]
    assert numeric_columns(["none", "1e-3"]) is None
    assert numeric_columns(["nan", "1"]) is None and numeric_columns(["inf"]) is None


def test_curves_plot_mean_and_std_over_the_other_axes(tmp_path: Path) -> None:
    from simulator.leaderboard.report import _mean_std, write_curves

    g = _noise_grid(["0", "1e-3", "1e-1"], seed=[0, 1])
    psnr = {
        ("0", 0): 24.0,
        ("0", 1): 22.0,
        ("1e-3", 0): 18.0,
        ("1e-3", 1): 17.0,
        ("1e-1", 0): 9.0,
        ("1e-1", 1): 9.0,
    }
    outs = [
        Outcome(c, "completed", {"inversion": {"psnr": psnr[(c.labels["sigma"], c.scenario.seed)]}})
        for c in g.cells
    ]
    recs = cell_records(g, outs)
    mean, std = _mean_std(recs, ["gradient"], ["0", "1e-3", "1e-1"], "psnr")
    assert mean.tolist() == [[23.0, 17.5, 9.0]] and std.tolist() == [
        [1.0, 0.5, 0.0]
    ]  # numpy's population std
    written = write_curves(g, recs, tmp_path)
    assert [p.name for p in written] == ["curve_psnr.png"]  # only metrics with data
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    smoke = load_grid(SMOKE)  # columns are attack names: no curve
    assert (
        write_curves(
            smoke, cell_records(smoke, [Outcome(c, "completed", {}) for c in smoke.cells]), tmp_path / "none"
        )
        == []
    )


def test_a_leakage_grid_run_writes_psnr_vs_sigma(tmp_path: Path) -> None:
    from simulator.leaderboard import run_grid

    g = _noise_grid(["0", "1e-1"], iterations=60)
    res = run_grid(g, store=tmp_path / "s.sqlite", out_dir=tmp_path / "out", progress=False)
    assert [c.status for c in res.cells] == ["completed", "completed"]
    psnr = {c.cell.labels["sigma"]: c.summary["inversion"]["psnr"] for c in res.cells}
    assert psnr["1e-1"] < 14.0 < psnr["0"] - 4.0  # as in test_ig_fails_on_a_drowned_payload
    out = tmp_path / "out"
    assert (out / "curve_psnr.png").is_file() and (out / "heatmap_psnr.png").is_file()
    html = (out / "leaderboard.html").read_text()
    assert "<h2>Plots</h2>" in html and 'alt="curve_psnr"' in html


def test_privacy_tables_show_only_the_metrics_some_cell_has() -> None:
    g = _noise_grid(["0", "1e-1"])
    outs = [
        Outcome(c, "completed", {"inversion": {"psnr": 20.0, "ssim": 0.5, "label_accuracy": 1.0}})
        for c in g.cells
    ]
    t = leaderboard_table(g, cell_records(g, outs))
    assert t.headers == ["0 PSNR", "0 SSIM", "0 label acc", "1e-1 PSNR", "1e-1 SSIM", "1e-1 label acc"]
    html = render_html(g, t, cell_records(g, outs), Path("."))
    assert ">ε (record)<" not in html and ">ε (client)<" not in html and ">MA<" not in html
    empty = leaderboard_table(g, cell_records(g, [Outcome(c, "completed", {}) for c in g.cells]))
    assert (
        len(empty.headers) == 2 * 8
    )  # nothing measured yet: every metric (both ε and both audit ε̂ too) stays, as "–"
