"""Every figure the project writes keeps its texts inside the figure, even with an 80-character scenario name
(issue 22: the leakage grid and the leaderboard heatmap cut their titles), and a reconstruction grid is large
enough to judge a reconstruction by eye.

Each plot kind is built by the same function the run uses (``rounds_figures``, ``grid_figure``,
``scores_figure``, ``heatmap_figure``, ``curve_figure``); the test draws it with matplotlib's Agg renderer,
records every Text artist actually drawn (titles, suptitle, axis labels, tick labels, legend entries,
annotations) and checks that each one's window extent lies inside the figure's bbox.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.text import Text
from PIL import Image

from simulator.audit.report import scores_figure
from simulator.experiment.leakage import grid_figure, psnr_text
from simulator.leaderboard.grid import AxisEntry, Grid
from simulator.leaderboard.report import (
    INTEGRITY_METRICS,
    PRIVACY_METRICS,
    cell_metrics,
    curve_figure,
    heatmap_figure,
)
from simulator.plots import pyplot, rounds_figures, save_figure

LONG = ("fl_with_inversion_" + "a_really_long_scenario_name_" * 3)[:80]  # 80 characters, no space to break at
TOL_PX = 0.5  # rounding of the renderer's extents


def _drawn_texts(fig: Any, monkeypatch: pytest.MonkeyPatch) -> list[Text]:
    """The non-empty Text artists the renderer draws (ticks outside the view are never drawn: not listed)."""
    drawn: list[Text] = []
    draw = Text.draw

    def recording(self: Text, renderer: Any) -> Any:
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)
        return draw(self, renderer)

    with monkeypatch.context() as m:
        m.setattr(Text, "draw", recording)
        fig.canvas.draw()
    return drawn


def _outside(fig: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every drawn text whose bounding box leaves the figure, as readable lines (empty when all fit)."""
    texts = _drawn_texts(fig, monkeypatch)
    assert texts, "nothing drawn"
    renderer = fig.canvas.get_renderer()
    w, h = fig.bbox.width, fig.bbox.height
    bad = []
    for t in texts:
        bb = t.get_window_extent(renderer)
        if bb.x0 < -TOL_PX or bb.y0 < -TOL_PX or bb.x1 > w + TOL_PX or bb.y1 > h + TOL_PX:
            where = f"[{bb.x0:.0f}, {bb.x1:.0f}] x [{bb.y0:.0f}, {bb.y1:.0f}]"
            bad.append(f"{t.get_text()!r}: {where} in {w:.0f}x{h:.0f}")
        assert t.get_fontsize() >= 6.0, f"{t.get_text()!r} shrunk to {t.get_fontsize()} pt"
    return bad


def _check(fig: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> Path:
    """Texts inside the figure; then the PNG written from the same figure has the figure's pixel size."""
    bad = _outside(fig, monkeypatch)
    assert not bad, "texts outside the figure:\n" + "\n".join(bad)
    w, h = fig.bbox.width, fig.bbox.height
    path = save_figure(fig, tmp_path / f"{name}.png")
    pw, ph = Image.open(path).size
    assert abs(pw - w) <= 1 and abs(ph - h) <= 1, ((pw, ph), (w, h))
    return path


def test_the_check_catches_a_cut_title(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: an unwrapped long title in a small figure (what the heatmap did) is reported."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2.9, 2.3))
    ax.set_title(f"{LONG}: MA (higher is better)")
    fig.tight_layout()
    try:
        assert any("higher is better" in b for b in _outside(fig, monkeypatch))
    finally:
        plt.close(fig)


def test_accuracy_and_loss_curves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rounds = [
        {
            "round": r,
            "main_accuracy": 0.1 * r,
            "backdoor_accuracy": 0.05 * r,
            "main_loss": 2.0 - 0.1 * r,
            "train_loss": 2.1 - 0.1 * r,
        }
        for r in range(1, 9)
    ]
    figs = rounds_figures(rounds, title=LONG, attacker_rounds=[2, 3])
    assert sorted(figs) == ["accuracy", "loss"]
    for name, fig in figs.items():
        _check(fig, monkeypatch, tmp_path, name)


@pytest.mark.parametrize("n", [1, 8])
def test_reconstruction_grid(n: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(n, 3, 32, 32, generator=g)
    title = f"{LONG}: mean PSNR {psnr_text({'psnr': 22.777})}, 0% of {n} images recovered (≥ 40 dB)"
    fig = grid_figure(truth, truth.flip(0), max_images=8, title=title)
    renderer = fig.canvas.get_renderer()
    sides = [
        min(ax.get_window_extent(renderer).width, ax.get_window_extent(renderer).height) for ax in fig.axes
    ]
    path = _check(fig, monkeypatch, tmp_path, f"grid{n}")
    assert len(sides) == 2 * n and min(sides) >= 250, sides  # each image cell ≥ 250 px
    assert min(Image.open(path).size) >= 250


def test_reconstruction_grid_of_many_images_is_capped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    truth = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    fig = grid_figure(truth, truth, max_images=16, title=LONG)
    renderer = fig.canvas.get_renderer()
    sides = [
        min(ax.get_window_extent(renderer).width, ax.get_window_extent(renderer).height) for ax in fig.axes
    ]
    path = _check(fig, monkeypatch, tmp_path, "grid16")
    w, _ = Image.open(path).size
    assert w <= 2500 and min(sides) >= 120, (w, min(sides))  # capped width; 16 images of 143 px


def test_psnr_text_of_an_exact_reconstruction() -> None:
    assert psnr_text({"psnr": "inf"}) == "∞ (exact)"  # how summary.json writes +∞
    assert psnr_text({"psnr": math.inf}) == "∞ (exact)"
    assert psnr_text({"psnr": None, "mse": 0.0}) == "∞ (exact)"  # older files
    assert psnr_text({"psnr": None, "mse": None}) == "–"


@pytest.mark.parametrize("panels", [1, 3])
def test_audit_histograms(panels: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = ["all_iterates_likelihood", "all_iterates_max", "final_model"][:panels]
    scores = {k: (rng.normal(1.0, 1.0, 40), rng.normal(0.0, 1.0, 60)) for k in names}
    title = f"{LONG}: canaries, ε̂ ≥ 0.53 (all iterates, 95%); ledger ε ≤ 3.02"
    _check(scores_figure(scores, title=title), monkeypatch, tmp_path, f"audit{panels}")


def _grid(track: str, rows: dict[str, list[str]], cols: dict[str, list[str]]) -> Grid:
    (row_axis, row_labels), (col_axis, col_labels) = next(iter(rows.items())), next(iter(cols.items()))
    return Grid(
        name=LONG,
        track=track,  # type: ignore[arg-type]
        base=Path("base.toml"),
        base_data={},
        overrides=[],
        axes={
            row_axis: [AxisEntry(x) for x in row_labels],
            col_axis: [AxisEntry(x) for x in col_labels],
        },
        rows=row_axis,
        columns=col_axis,
    )


def _record(row: str, col: str, summary: dict[str, Any], selects: bool = True) -> dict[str, Any]:
    return {
        "row": row,
        "col": col,
        "status": "completed",
        "selects_clients": selects,
        **cell_metrics(summary),
    }


def _integrity_records() -> tuple[Grid, list[dict[str, Any]]]:
    defenses = ["fedavg", "median", "a_defense_with_a_rather_long_label"]
    attacks = ["none", "badnets", "sign_flip"]
    g = _grid("integrity", {"defense": defenses}, {"attack": attacks})
    recs = []
    for i, d in enumerate(defenses):
        for j, a in enumerate(attacks):
            s = {
                "final": {
                    "main_accuracy": 0.9 - 0.1 * j,
                    "backdoor_accuracy": 0.1 * i if a == "badnets" else None,
                }
            }
            s["defense"] = {"tpr": 0.5, "fpr": 0.1}
            recs.append(_record(d, a, s, selects=d.startswith("a_")))
    return g, recs


@pytest.mark.parametrize("key", ["main_accuracy", "backdoor_accuracy", "tpr"])
def test_leaderboard_heatmap(key: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    g, recs = _integrity_records()
    metric = next(m for m in INTEGRITY_METRICS if m.key == key)
    fig = heatmap_figure(g, recs, metric)
    assert fig is not None
    texts = [t.get_text() for t in fig.axes[0].texts]
    if key == "tpr":  # FedAvg and median never leave a client out: n/a, not a measured 0
        assert texts.count("n/a") == 6 and texts.count("0.500") == 3
    _check(fig, monkeypatch, tmp_path, f"heatmap_{key}")


def test_privacy_heatmap_and_curve_with_an_exact_reconstruction(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sigmas = ["0", "1e-4", "1e-3", "1e-2", "1e-1"]
    g = _grid("privacy", {"payload": ["gradient", "update_3_steps"]}, {"sigma": sigmas})
    psnr = {"0": "inf", "1e-4": 30.0, "1e-3": 24.0, "1e-2": 18.0, "1e-1": 9.0}
    recs = [
        _record(p, s, {"inversion": {"psnr": psnr[s] if p == "gradient" else 20.0, "ssim": 0.5}})
        for p in ("gradient", "update_3_steps")
        for s in sigmas
    ]
    metric = next(m for m in PRIVACY_METRICS if m.key == "psnr")
    heat = heatmap_figure(g, recs, metric)
    assert heat is not None and "∞ (exact)" in [t.get_text() for t in heat.axes[0].texts]
    _check(heat, monkeypatch, tmp_path, "heatmap_psnr")
    curve = curve_figure(g, recs, metric)
    assert curve is not None
    assert "PSNR ∞ (exact)" in [t.get_text() for t in curve.axes[0].get_legend().get_texts()]
    _check(curve, monkeypatch, tmp_path, "curve_psnr")
