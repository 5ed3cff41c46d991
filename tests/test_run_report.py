"""The run report (``report.html``): written by every run, self-contained, and rendered by a real headless
Chromium (tables present, every image loaded, a screenshot that is not blank)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simulator import load_scenario
from simulator.cli import app
from simulator.run_report import fmt_epsilon, format_value
from simulator.runner import run
from tests.helpers import chromium as chromium_helper
from tests.helpers.chromium import dump_dom, screenshot

# DP-FedAvg (client-level ε) on 600 8×8 scikit-learn digits, 20 clients, an MLP, two rounds, inline engine
# in this process
TINY_DP = [
    "data.dataset='digits'",
    "data.max_examples=600",
    "simulation.workers=1",
    "data.num_clients=20",
    "federation.rounds=2",
    "federation.sampling_rate=0.5",
    "simulation.engine='inline'",
]
# Inverting Gradients on one 32×32 photo, 20 iterations: enough for a reconstruction grid
TINY_LEAK = ["attacks.inversion.params.iterations=20", "attacks.inversion.params.restarts=1"]


@pytest.fixture(scope="module")
def fed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fed")
    s = load_scenario("scenarios/dp_fedavg.toml", TINY_DP)
    run(s, out_dir=tmp / "run", store=tmp / "store.sqlite")
    return tmp / "run"


@pytest.fixture(scope="module")
def leak_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("leak")
    s = load_scenario("scenarios/leakage_ig.toml", TINY_LEAK)
    run(s, out_dir=tmp / "run", store=tmp / "store.sqlite")
    return tmp / "run"


def _pngs(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.png")]


def test_every_run_writes_a_self_contained_report(fed_run: Path) -> None:
    page = (fed_run / "report.html").read_text()
    summary = json.loads((fed_run / "summary.json").read_text())
    # self-contained: every image inline, no stylesheet, script or image fetched from anywhere
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(srcs) == len(_pngs(fed_run)) >= 2  # accuracy.png, loss.png
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"<(?:link|script)[^>]+(?:href|src)=", page)
    assert "http://" not in page and "https://" not in page
    # the round table: one row per round of rounds.csv
    table = re.search(r'<table class="grid" id="rounds">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert table is not None and table.group(1).count("<tr>") == 2
    # the privacy block and the headline ε, to 3 significant digits
    eps = summary["privacy"]["epsilon"]
    assert 'id="block-privacy"' in page
    assert f'<div class="v">{fmt_epsilon(eps)}</div>' in page
    assert len(re.sub(r"^0\.0*|\.", "", fmt_epsilon(eps))) == 3
    assert str(eps) not in page.split('<pre class="json">')[0].replace(f'title="{eps}"', "")
    assert "scenarios/dp_fedavg.toml" in page  # the source file
    assert (fed_run / "engine.log").is_file()


def test_numbers_are_formatted_for_people() -> None:
    assert fmt_epsilon(3.0220781175468483) == "3.02" and fmt_epsilon(4.8) == "4.80"
    assert fmt_epsilon(1234.5) == "1230" and fmt_epsilon("inf") == "inf"
    assert format_value("main_accuracy", 0.579) == "0.5790"
    assert format_value("wall_time_s", 73.217) == "73.22 s"
    assert format_value("psnr", "inf") == "∞ (exact)" and format_value("inversion_psnr", 12.345) == "12.35 dB"
    assert format_value("bytes_up", 18196880) == "18.2 MB"
    assert format_value("iterations", 20) == "20"  # not a "ratio" for containing the letters
    assert format_value("delta", 1e-5) == "1e-05" and format_value("tpr", None) == "–"


@pytest.mark.parametrize("which", ["fed", "leak"])
def test_report_renders_in_headless_chromium(
    which: str, fed_run: Path, leak_run: Path, tmp_path: Path
) -> None:
    folder = fed_run if which == "fed" else leak_run
    url = (folder / "report.html").resolve().as_uri()
    dom = dump_dom(url, tmp_path / "profile", virtual_time_budget_ms=5000)
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    n = len(_pngs(folder))
    assert attrs.get("images-loaded") == "true", attrs  # every <img> complete with a natural width
    assert attrs.get("images-total") == str(n) == attrs.get("images-ok")
    assert "<table" in dom
    if which == "fed":
        assert 'id="rounds"' in dom and 'id="block-privacy"' in dom
    else:
        assert 'id="reconstructions"' in dom and "reconstruction.png" in dom
        assert n >= 1
    png = screenshot(url, tmp_path / "shot.png", tmp_path / "profile", size=(1200, 2000))
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape == (2000, 1200, 3)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50 and pixels.std() > 10.0  # text, tables and plots, not a blank page


def test_privsim_report_rebuilds_the_page_and_refuses_a_non_run_folder(fed_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(fed_run, folder)
    (folder / "report.html").unlink()
    res = CliRunner().invoke(app, ["report", str(folder)])
    assert res.exit_code == 0, res.output
    assert (folder / "report.html").is_file() and str(folder / "report.html") in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(app, ["report", str(empty)])
    assert res.exit_code == 2 and "no summary.json here" in res.output
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such folder" in res.output


def test_missing_chromium_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chromium_helper.shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        chromium_helper.chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="headless Chromium not found"):
        chromium_helper.chromium()
