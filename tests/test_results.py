"""The results store and the output folder (quickstart, 2 rounds, through the CLI)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from simulator.results import ResultsStore, RoundRecord, RunResult


def test_store_keeps_rounds_as_they_finish_and_finds_runs_by_digest(tmp_path):
    st = ResultsStore(tmp_path / "r.sqlite")
    rid = st.start_run(digest="abc", name="x", out_dir=None)
    st.add_round(rid, RoundRecord(round=1, main_accuracy=0.5))
    assert st.finished("abc") is None  # not finished yet, but the round is kept
    assert st.rounds(rid)[0]["main_accuracy"] == 0.5
    res = RunResult(
        name="x",
        scenario={},
        scenario_digest="abc",
        seed=0,
        engine="inline",
        versions={},
        rounds=[RoundRecord(round=1, main_accuracy=0.5)],
        wall_time_s=1.0,
        status="completed",
    )
    st.finish_run(rid, res)
    assert st.finished("abc")["final"]["main_accuracy"] == 0.5
    assert st.runs()[0]["status"] == "completed"


@pytest.mark.slow
def test_cli_quickstart_two_rounds_writes_summary_csv_plots_and_store(tmp_path):
    out = tmp_path / "run"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulator.cli",
            "run",
            "scenarios/quickstart.toml",
            "--set",
            "federation.rounds=2",
            "--out",
            str(out),
            "--store",
            str(tmp_path / "s.sqlite"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert len(summary["rounds"]) == 2 and summary["rounds"][1]["round"] == 2
    assert 0.1 < summary["final"]["main_accuracy"] <= 1.0
    for key in ("seed", "versions", "wall_time_s", "communication", "scenario", "best", "scenario_digest"):
        assert key in summary
    assert summary["communication"]["bytes_up"] > 0
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "loss.png").exists()
    assert (out / "rounds.csv").read_text().count("\n") == 3
    assert "round    2/2" in p.stderr  # the per-round line
    assert ResultsStore(tmp_path / "s.sqlite").finished(summary["scenario_digest"]) is not None
