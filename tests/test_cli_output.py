"""What ``privsim run`` prints: privsim's own lines, numbers formatted for people, and none of Flower's log
lines (they go to <run>/engine.log; ``--verbose`` shows them again)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import flwr
import pytest

from simulator.runlog import RunLog, ray_init_args

ROOT = Path(__file__).resolve().parents[1]
# DP-FedAvg (client-level ε) on 600 8×8 scikit-learn digits, 20 clients, an MLP, inline engine in this process
TINY_DP = [
    "data.dataset='digits'",
    "data.max_examples=600",
    "data.num_clients=20",
    "federation.rounds=2",
    "federation.sampling_rate=0.5",
    "simulation.engine='inline'",
    "simulation.workers=1",
]
# The inline engine itself logs nothing through Flower, so the driver makes the run do what a Ray run does:
# build a Flower strategy that logs a WARNING ("fraction_evaluate is set to 0.0") and raise a Python warning
# from inside the flwr package, then calls the CLI's entry point.
DRIVER = """
import sys, warnings
import flwr
from flwr.serverapp.strategy import FedAvg
import simulator.runner as runner

_make = runner.make_server_app


def noisy(*args, **kwargs):
    FedAvg(fraction_evaluate=0.0)  # Flower: WARNING "fraction_evaluate is set to 0.0 ..."
    warnings.warn_explicit("a FutureWarning raised inside flwr", FutureWarning, flwr.__file__, 1)
    return _make(*args, **kwargs)


runner.make_server_app = noisy
from simulator.cli import main

main(sys.argv[1:])
"""


def _privsim_run(tmp: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp / "run"
    sets = [a for s in TINY_DP for a in ("--set", s)]
    cmd = [sys.executable, "-c", DRIVER, "run", "scenarios/dp_fedavg.toml", *sets]
    cmd += ["--out", str(out), "--store", str(tmp / "s.sqlite"), *extra]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p, out


def test_flower_lines_go_to_engine_log_and_numbers_are_for_people(tmp_path: Path) -> None:
    p, out = _privsim_run(tmp_path)
    terminal = p.stdout + p.stderr
    assert "fraction_evaluate" not in terminal and "raised inside flwr" not in terminal
    assert not re.search(r"\bflwr\b|WARNING|INFO", terminal), terminal
    log = (out / "engine.log").read_text()
    assert "fraction_evaluate is set to 0.0" in log
    assert "FutureWarning: a FutureWarning raised inside flwr" in log
    assert "round    2/2" in p.stderr  # privsim's own per-round lines stay
    last = p.stdout.strip().splitlines()[-1]
    summary = json.loads((out / "summary.json").read_text())
    eps = summary["privacy"]["epsilon"]
    m = re.search(r"epsilon (\d+(?:\.\d+)?)\b", last)
    assert m is not None, last
    assert len(re.sub(r"^0\.0*|\.", "", m.group(1))) == 3  # 3 significant digits
    assert float(m.group(1)) == pytest.approx(eps, rel=5e-3)
    acc = re.search(r"final main accuracy (\d\.\d+)\b", last)
    assert acc is not None and len(acc.group(1)) == 6  # 4 decimals
    assert float(acc.group(1)) == pytest.approx(summary["final"]["main_accuracy"], abs=5e-5)
    assert re.search(r"; \d+\.\d\d s;", last)  # seconds to 2 decimals
    assert (out / "report.html").is_file()


def test_verbose_shows_flower_lines_again(tmp_path: Path) -> None:
    p, out = _privsim_run(tmp_path, "--verbose", "--set", "federation.rounds=1")
    assert "fraction_evaluate is set to 0.0" in p.stderr
    assert "a FutureWarning raised inside flwr" in p.stderr
    assert "fraction_evaluate is set to 0.0" in (out / "engine.log").read_text()  # and still in the file


def _code_in(path: str, src: str, env: dict[str, object]) -> None:
    """Define the functions of ``src`` as if they were written in the file ``path``."""
    exec(compile(src, path, "exec"), env)


def test_runlog_routes_engine_loggers_and_warnings_and_restores_them(tmp_path: Path) -> None:
    flwr_dir = Path(flwr.__file__).parent
    env: dict[str, object] = {"warnings": warnings}
    # a third-party library warning, once called by Flower (engine) and once by privsim's own code (shown)
    _code_in(
        "/somewhere/site-packages/pathspec/x.py",
        "def lib():\n    warnings.warn('lib', FutureWarning)",
        env,
    )
    _code_in(str(flwr_dir / "fake.py"), "def from_flwr():\n    lib()", env)
    _code_in(str(ROOT / "simulator" / "fake.py"), "def from_privsim():\n    lib()", env)
    flwr_logger = logging.getLogger("flwr")
    before = (list(flwr_logger.handlers), flwr_logger.propagate)
    log = tmp_path / "engine.log"
    with warnings.catch_warnings(record=True) as shown, RunLog(log):
        warnings.simplefilter("always")
        flwr_logger.warning("a Flower warning")
        env["from_flwr"]()  # type: ignore[operator]
        env["from_privsim"]()  # type: ignore[operator]
        assert not flwr_logger.propagate and len(flwr_logger.handlers) == 1
        assert ray_init_args() == {"log_to_driver": True, "logging_level": "INFO"}
    text = log.read_text()
    assert "a Flower warning" in text and "FutureWarning: lib" in text
    assert [str(w.message) for w in shown] == ["lib"]  # only the one privsim's code triggered
    assert (list(flwr_logger.handlers), flwr_logger.propagate) == before
    assert ray_init_args() == {"log_to_driver": True}  # outside a run: Ray's default
