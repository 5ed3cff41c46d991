"""The benchmark scripts still import and parse their arguments, and bench_ig prints its table
(speed is measured by running them, never asserted here)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_imports_and_shows_its_usage(script: str, monkeypatch, capsys) -> None:
    # in-process: import the script as a module (its main() is guarded) and ask it for --help
    spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", ROOT / "benchmarks" / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as e:
        mod.main()
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_bench_ig_prints_one_row_per_variant_with_its_psnr() -> None:
    p = _run(
        "benchmarks/bench_ig.py", "--model", "cnn", "--batches", "1", "--iterations", "2", "--restarts", "2"
    )
    assert p.returncode == 0, p.stderr
    rows = [line.split() for line in p.stdout.splitlines() if line.strip().startswith("1 ")]
    assert [r[1] for r in rows] == ["eager", "loop", "vmap"]  # compiled rows are CUDA-only by default
    assert all(float(r[-2]) > 0 for r in rows)  # a PSNR was measured for each
