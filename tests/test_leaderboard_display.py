"""What the leaderboard shows people (issue 22): an exact reconstruction is "∞ (exact)" and sorts as the
highest PSNR, record- and client-level ε have their own columns, detection rates of aggregators that never
leave a client out are "n/a", and a cell finished in an earlier run is "done (stored)"."""

from __future__ import annotations

import io
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

import defenses  # noqa: F401  (registers every aggregator)
from defenses.base import AGGREGATORS
from simulator.context import RoundContext
from simulator.flat import Layout
from simulator.leaderboard import grid_from_dict, load_grid
from simulator.leaderboard.report import CellOutcome as Outcome
from simulator.leaderboard.report import (
    cell_metrics,
    cell_records,
    leaderboard_table,
    print_tables,
    render_html,
    render_markdown,
    status_text,
    write_csv,
)
from tests.helpers.chromium import dump_dom

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scenarios" / "leaderboard_smoke.toml"  # fedavg and median, no attack, seeds 0 and 1
DP_GRID = ROOT / "scenarios" / "dp_grid.toml"  # client-level and record-level DP rows


# ---------------------------------------------------------------- values read from summaries


def test_infinite_psnr_is_a_value_not_a_missing_one() -> None:
    assert cell_metrics({"inversion": {"psnr": "inf"}})["psnr"] == math.inf  # how summary.json writes +∞
    assert cell_metrics({"inversion": {"psnr": math.inf}})["psnr"] == math.inf
    assert cell_metrics({"inversion": {"psnr": None, "mse": 0.0}})["psnr"] == math.inf  # older files
    assert cell_metrics({"inversion": {"psnr": None, "mse": None}})["psnr"] is None  # refused: nothing sent
    assert cell_metrics({"inversion": {"psnr": "n/a"}})["psnr"] is None
    assert cell_metrics({"privacy": {"level": "client", "epsilon": "inf"}})["epsilon_client"] == math.inf


@pytest.mark.parametrize(
    ("block", "unit"),
    [
        ({"level": "record", "epsilon": 2.0}, "record"),  # RecordLevelDP (DP-SGD, input perturbation)
        ({"level": "client", "epsilon": 2.0}, "client"),  # ClientLevelDP (DP-FedAvg)
        ({"level": "client (sketch)", "epsilon": 2.0}, "client"),  # SketchDP
        ({"epsilon_view": "records", "epsilon": 2.0}, "record"),  # no level: the ledger view tells
        ({"epsilon_view": "aggregate", "epsilon": 2.0}, "client"),
        ({"epsilon": 2.0}, "unstated"),
    ],
)
def test_epsilon_goes_to_the_column_of_its_level(block: dict[str, Any], unit: str) -> None:
    m = cell_metrics({"privacy": block, "audit": {"epsilon_lower": 0.5}})
    assert m["epsilon"] == 2.0 and m["epsilon_lower"] == 0.5  # the headline, whatever the level (CSV)
    for u in ("record", "client", "unstated"):
        assert m[f"epsilon_{u}"] == (2.0 if u == unit else None)
        assert m[f"epsilon_lower_{u}"] == (0.5 if u == unit else None)  # the audit takes the run's level
    audit_own = cell_metrics({"privacy": block, "audit": {"level": "record", "epsilon_lower": 0.5}})
    assert audit_own["epsilon_lower_record"] == 0.5


# ---------------------------------------------------------------- tables


def _dp_summary(label: str) -> dict[str, Any]:
    if label.startswith("client"):
        return {"final": {"main_accuracy": 0.8}, "privacy": {"level": "client", "epsilon": 2.5}}
    if label.startswith("record"):
        return {"final": {"main_accuracy": 0.85}, "privacy": {"level": "record", "epsilon": 7.0}}
    return {"final": {"main_accuracy": 0.9}}


def test_record_and_client_level_epsilon_have_separate_columns(tmp_path: Path) -> None:
    g = load_grid(DP_GRID)
    recs = cell_records(g, [Outcome(c, "completed", _dp_summary(c.labels["mechanism"])) for c in g.cells])
    t = leaderboard_table(g, recs)
    assert t.headers == ["all MA", "all ε (record)", "all ε (client)"]  # no "level not stated" column
    md = render_markdown(g, t, recs)
    assert "| client_z1 | 0.8000 | – | **2.5000** |" in md
    assert "| record_z1 | 0.8500 | **7.0000** | – |" in md
    assert "| none | **0.9000** | – | – |" in md
    html = render_html(g, t, recs, tmp_path)
    assert ">ε (record)</th>" in html and ">ε (client)</th>" in html and ">ε</th>" not in html
    write_csv(g, recs, tmp_path / "lb.csv")
    head = (tmp_path / "lb.csv").read_text().splitlines()[0].split(",")
    assert {"epsilon", "epsilon_record", "epsilon_client"} <= set(head)


def test_an_epsilon_without_a_level_gets_its_own_column() -> None:
    g = load_grid(DP_GRID)
    outs = [Outcome(c, "completed", {"privacy": {"epsilon": 3.0}}) for c in g.cells]
    t = leaderboard_table(g, cell_records(g, outs))
    assert t.headers == ["all ε (level not stated)"]


def _noise_outcomes() -> tuple[Any, list[Outcome]]:
    g = load_grid(ROOT / "scenarios" / "leakage_noise_grid.toml")
    psnr = {"0": "inf", "1e-4": 30.0, "1e-3": 24.0, "1e-2": 18.0, "1e-1": 9.0}
    outs = [
        Outcome(
            c,
            "completed",
            {"inversion": {"psnr": psnr[c.labels["sigma"]] if c.labels["payload"] == "gradient" else 20.0}},
        )
        for c in g.cells
    ]
    return g, outs


def test_exact_reconstruction_shows_as_infinity_exact(tmp_path: Path) -> None:
    g, outs = _noise_outcomes()
    recs = cell_records(g, outs)
    t = leaderboard_table(g, recs)
    md = render_markdown(g, t, recs)
    row = next(line for line in md.splitlines() if line.startswith("| gradient |"))
    assert row.split(" | ")[1] == "∞ (exact)", row  # sigma 0: every image exact
    html = render_html(g, t, recs, tmp_path)
    assert '<td data-value="Infinity">∞ (exact)</td>' in html


def test_detection_rates_of_aggregators_that_never_reject_are_not_applicable() -> None:
    g = load_grid(SMOKE)
    outs = [Outcome(c, "completed", {"final": {}, "defense": {"tpr": 0.0, "fpr": 0.0}}) for c in g.cells]
    recs = cell_records(g, outs)
    assert {r["row"]: r["selects_clients"] for r in recs} == {"fedavg": False, "median": False}
    assert all(r["tpr"] is None and r["fpr"] is None for r in recs)  # 0 by construction, no measurement
    md = render_markdown(g, leaderboard_table(g, recs), recs)
    assert "| fedavg | – | – | n/a | n/a | – |" in md and "| median | – | – | n/a | n/a | – |" in md
    # the same grid with Krum in place of median: Krum's rates are measured, FedAvg's stay n/a
    raw = tomllib.loads(SMOKE.read_text())
    raw["axes"]["defense"][1] = {"label": "krum", "set": ["defenses.aggregator.name='krum'"]}
    mixed = grid_from_dict(raw, source="mixed.toml", root=SMOKE.parent)
    rates = {"final": {}, "defense": {"tpr": 0.0, "fpr": 0.25}}
    outs = [Outcome(c, "completed", rates) for c in mixed.cells]
    recs = cell_records(mixed, outs)
    md = render_markdown(mixed, leaderboard_table(mixed, recs), recs)
    assert "| fedavg | – | – | n/a | n/a | – |" in md
    assert "| krum | – | – | **0.0000** | **0.2500** | – |" in md


NON_SELECTING = [n for n in AGGREGATORS.names() if not AGGREGATORS.get(n).factory.selects_clients]


def test_which_aggregators_never_leave_a_client_out() -> None:
    assert set(NON_SELECTING) == {
        "fedavg",
        "median",
        "trimmed_mean",
        "norm_clipping",
        "centered_clipping",
        "rfa",
        "rlr",
    }


@pytest.mark.parametrize("name", NON_SELECTING)
def test_an_aggregator_that_declares_it_selects_no_client_accepts_everyone(name: str) -> None:
    n, d = 9, 32
    g = torch.Generator().manual_seed(0)
    updates = torch.randn(n, d, generator=g)
    updates[0] *= 50.0  # an outlier a selecting rule would drop
    ids = tuple(3 * i + 1 for i in range(n))
    ctx = RoundContext(
        server_round=1,
        seed=0,
        global_vector=torch.zeros(d),
        layout=Layout(("w",), ((d,),)),
        client_ids=ids,
        num_examples=(10,) * n,
        num_clients=100,
        expected_clients_per_round=float(n),
    )
    res = AGGREGATORS.create(name, {}).aggregate(updates, torch.full((n,), 10.0), ctx)
    assert sorted(res.accepted) == sorted(ids)


def test_cells_finished_earlier_are_done_stored(tmp_path: Path) -> None:
    assert status_text("skipped") == "done (stored)" and status_text("failed") == "failed"
    g = load_grid(SMOKE)
    outs = [Outcome(c, "skipped", {"final": {"main_accuracy": 0.5}}) for c in g.cells]
    recs = cell_records(g, outs)
    t = leaderboard_table(g, recs)
    assert "4 cells: 0 run now, 4 done (stored), 0 failed, 0 not run." in render_markdown(g, t, recs)
    html = render_html(g, t, recs, tmp_path)
    assert html.count('<td class="label">done (stored)</td>') == 4 and "skipped" not in html
    write_csv(g, recs, tmp_path / "lb.csv")
    assert (tmp_path / "lb.csv").read_text().count(",done (stored),") == 4
    buf = io.StringIO()
    print_tables(g, outs, Console(file=buf, width=200))
    out = buf.getvalue()
    assert out.count("done (stored)") == 4 and "n/a" in out and "skipped" not in out


# ---------------------------------------------------------------- sorting ∞ in a real browser


def test_html_sorts_an_exact_reconstruction_as_the_highest_psnr(tmp_path: Path) -> None:
    g, outs = _noise_outcomes()
    outs = [
        o for o in outs if o.cell.labels["image"] == outs[0].cell.labels["image"]
    ]  # one per sigma/payload
    recs = cell_records(g, outs)
    page = tmp_path / "leaderboard.html"
    page.write_text(render_html(g, leaderboard_table(g, recs), recs, tmp_path))
    order = {}
    for d in ("asc", "desc"):
        dom = dump_dom(f"file://{page}?table=cells&sort=psnr&dir={d}", tmp_path / "profile")
        table = re.search(r'<table id="cells"[^>]*>(.*?)</table>', dom, re.S)
        assert table is not None
        headers = re.findall(r'<th[^>]*data-key="([^"]*)"', table.group(1))
        j = headers.index("psnr")
        col = []
        for row in re.findall(r"<tr data-cell=[^>]*>(.*?)</tr>", table.group(1), re.S):
            m = re.search(r'data-value="([^"]*)"', re.findall(r"<td([^>]*)>", row)[j])
            col.append(m.group(1) if m else "")
        order[d] = col
    assert order["desc"][0] == "Infinity"  # the best reconstruction first, not last like a missing value
    nums = [float(v.replace("Infinity", "inf")) for v in order["asc"]]
    assert nums == sorted(nums) and nums[-1] == math.inf  # ascending: every finite value, then ∞
    assert [float(v.replace("Infinity", "inf")) for v in order["desc"]] == sorted(nums, reverse=True)
