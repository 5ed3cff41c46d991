"""Issue 18's leaderboard part: the poisoning grids expand into valid cells, the grid-level accuracy drop, the
ranking score on untargeted attacks (relative MA change only) next to backdoor ones, and the report /
benchmark tables that show them."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from simulator.leaderboard import load_grid, ranking_scores
from simulator.leaderboard.report import (
    INTEGRITY_METRICS,
    add_accuracy_drop,
    backdoor_columns,
    cell_metrics,
    cell_records,
    leaderboard_table,
    ranking_terms,
    render_markdown,
    write_reports,
)
from simulator.leaderboard.report import CellOutcome as Outcome

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT / "scenarios" / "poisoning_grid.toml"
SMALL = ROOT / "scenarios" / "poisoning_small_grid.toml"
ATTACKS = [
    "none",
    "sign_flip",
    "gaussian",
    "label_flip",
    "alie",
    "ipm",
    "fang_krum",
    "fang_trimmed_mean",
    "min_max",
    "min_sum",
    "agr_tailored",
]


@pytest.fixture(scope="module")
def grids() -> dict[str, Any]:
    return {"full": load_grid(FULL), "small": load_grid(SMALL)}


# ---------------------------------------------------------------- the grid files


def test_both_poisoning_grids_expand_every_cell_into_a_valid_scenario(grids: dict[str, Any]) -> None:
    """Neither grid runs in CI; every cell must at least validate (attack params, plan, aggregator)."""
    from attacks.base import POISONING_ATTACKS
    from defenses.base import AGGREGATORS

    full, small = grids["full"], grids["small"]
    for g in (full, small):
        assert g.track == "integrity" and g.baseline == "fedavg"
        assert len({c.digest for c in g.cells}) == len(g.cells)
        assert [e.label for e in g.axes["attack"]] == ATTACKS
        defenses = {c.scenario.defenses.aggregator.name for c in g.cells}
        # every aggregator registered when the grid was written (a newer one is not forced into it)
        assert "fedavg" in defenses and len(defenses) >= 15 and defenses <= set(AGGREGATORS.names())
        assert [e.label for e in g.axes["defense"]] == [e.label for e in full.axes["defense"]]
        crafted: set[str] = set()
        for c in g.cells:
            s, label = c.scenario, c.labels["attack"]
            assert s.defenses.aggregator.name == c.labels["defense"]
            assert s.simulation.engine == "inline"
            if label == "none":
                assert s.attacks.poisoning is None and s.attacks.backdoor is None
                continue
            plan = s.attacks.plan
            assert (plan.malicious_fraction, plan.start_round, plan.every) == (0.2, 1, 1)
            assert plan.guarantee_sampled and plan.end_round is None and plan.rounds is None
            if label == "label_flip":  # data poisoning through the client attack slot
                assert s.attacks.backdoor is not None and s.attacks.backdoor.name == "label_flip"
                assert s.attacks.poisoning is None
            else:
                assert s.attacks.poisoning is not None and s.attacks.poisoning.name == label
                assert s.attacks.poisoning.params["knowledge"] == "omniscient"
                assert s.attacks.backdoor is None
                crafted.add(label)
        assert crafted == set(POISONING_ATTACKS.names())
    # the full grid: backdoor_defense_grid's setting, both alphas
    assert len(full.cells) == len(ATTACKS) * len(full.axes["defense"]) * 2
    assert {c.labels["alpha"] for c in full.cells} == {"0.5", "0.1"}
    for c in full.cells:
        s = c.scenario
        assert (s.model.name, s.data.dataset, s.data.num_clients, s.federation.clients_per_round) == (
            "cnn",
            "mnist5k",
            20,
            10,
        )
        assert s.model.warm_start is not None and s.model.warm_start.rounds == 20
        assert s.federation.rounds == 10
        assert s.data.partitioner.params["alpha"] == float(c.labels["alpha"])
    # the small grid: the cheap setting, both alphas
    assert len(small.cells) == len(ATTACKS) * len(small.axes["defense"]) * 2
    for c in small.cells:
        s = c.scenario
        assert (s.model.name, s.model.params["hidden"], s.data.max_examples) == ("mlp", [64], 2000)
        assert (s.data.num_clients, s.federation.clients_per_round) == (20, 10)
        assert s.model.warm_start is not None and s.model.warm_start.rounds == 5
        assert s.federation.rounds == 5
        assert s.data.partitioner.params["alpha"] == float(c.labels["alpha"])


# ---------------------------------------------------------------- accuracy drop


def _fake_outcomes(g: Any, ma: dict[tuple[str, str], float], ba: dict[str, float] | None = None) -> list[Any]:
    """Completed outcomes for ``g``'s cells with MA from ``(attack, defense)`` (missing pairs: no MA) and
    BA per attack label."""
    out = []
    for c in g.cells:
        key = (c.labels["attack"], c.labels["defense"])
        final: dict[str, Any] = {}
        if key in ma:
            final["main_accuracy"] = ma[key]
        if ba and c.labels["attack"] in ba:
            final["backdoor_accuracy"] = ba[c.labels["attack"]]
        out.append(Outcome(c, "completed", {"final": final, "defense": {"tpr": 0.5, "fpr": 0.1}}))
    return out


def test_accuracy_drop_is_the_attack_free_cell_minus_the_cell_per_defense_and_other_axes() -> None:
    def rec(attack: str, defense: str, alpha: str, ma: float | None, status: str = "completed") -> dict:
        return {"attack": attack, "defense": defense, "alpha": alpha, "main_accuracy": ma, "status": status}

    recs = [
        rec("none", "fedavg", "0.5", 0.90),
        rec("none", "fedavg", "0.1", 0.80),
        rec("alie", "fedavg", "0.5", 0.60),
        rec("alie", "fedavg", "0.1", 0.75),
        rec("none", "median", "0.5", 0.85),
        rec("alie", "median", "0.5", 0.88),  # the attack helped: a negative drop
        rec("alie", "median", "0.1", 0.50),  # no attack-free partner at alpha 0.1
        rec("alie", "krum", "0.5", None),
        rec("none", "bulyan", "0.5", 0.7, status="failed"),  # a failed run is no reference
        rec("alie", "bulyan", "0.5", 0.6),
    ]
    add_accuracy_drop(recs, ["attack", "defense", "alpha"], "attack")
    drops = [r["accuracy_drop"] for r in recs]
    assert drops == pytest.approx([0.0, 0.0, 0.30, 0.05, 0.0, -0.03, None, None, None, None])


def test_accuracy_drop_is_grid_level_not_per_run(grids: dict[str, Any]) -> None:
    """A summary alone has no drop (cell_metrics says None); cell_records computes it from the grid."""
    assert cell_metrics({"final": {"main_accuracy": 0.5, "accuracy_drop": 0.2}})["accuracy_drop"] is None
    assert "accuracy_drop" in [m.key for m in INTEGRITY_METRICS]
    g = grids["small"]
    ma = {(a, d.label): 0.9 - 0.05 * i for i, a in enumerate(ATTACKS) for d in g.axes["defense"]}
    recs = cell_records(g, _fake_outcomes(g, ma))
    by = {(r["attack"], r["defense"]): r["accuracy_drop"] for r in recs}
    assert by[("none", "median")] == 0.0
    assert by[("alie", "median")] == pytest.approx(0.05 * ATTACKS.index("alie"))
    assert by[("agr_tailored", "dnc")] == pytest.approx(0.05 * 10)


# ---------------------------------------------------------------- ranking score


def _rec(row: str, col: str, o: str, ma: float | None, ba: float | None = None) -> dict[str, Any]:
    return {"row": row, "col": col, "others": (("alpha", o),), "main_accuracy": ma, "backdoor_accuracy": ba}


def test_ranking_untargeted_columns_score_the_relative_ma_change_only() -> None:
    records = [
        _rec("fedavg", "none", "a", 0.80),
        _rec("fedavg", "alie", "a", 0.40),
        _rec("fedavg", "alie", "b", 0.20),
        _rec("fedavg", "pgd", "a", 0.80, 0.90),
        _rec("median", "none", "a", 0.76),
        _rec("median", "alie", "a", 0.60),  # +0.5
        _rec("median", "alie", "b", 0.10),  # -0.5
        _rec("median", "pgd", "a", 0.80, 0.45),  # 0 - (-0.5)
        _rec("krum", "alie", "a", 0.80),  # +1.0 (b missing: left out)
        _rec("krum", "pgd", "a", 0.40, None),  # BA missing in a backdoor column: MA term only
    ]
    assert backdoor_columns(records) == {"pgd"}
    terms = ranking_terms(records, "fedavg")
    assert terms["fedavg"] == pytest.approx({"none": 0.0, "alie": 0.0, "pgd": 0.0})
    assert terms["median"] == pytest.approx({"none": -0.05, "alie": 0.0, "pgd": 0.5})
    assert terms["krum"] == pytest.approx({"alie": 1.0, "pgd": -0.5})
    s = ranking_scores(records, "fedavg")
    assert s == pytest.approx({"fedavg": 0.0, "median": 0.45, "krum": 0.5})


def test_ranking_of_a_backdoor_grid_is_unchanged() -> None:
    """The pre-issue-18 formula Σ_a mean_o[ΔMA − ΔBA] (a missing or zero baseline BA adds 0), written out."""
    records = [
        _rec("fedavg", "none", "a", 0.80),
        _rec("fedavg", "badnets", "a", 0.80, 0.90),
        _rec("fedavg", "badnets", "b", 0.50, 0.0),
        _rec("median", "none", "a", 0.84),
        _rec("median", "badnets", "a", 0.76, 0.09),
        _rec("median", "badnets", "b", 0.55, 0.3),
        _rec("flame", "badnets", "a", 0.78, None),
    ]

    def old(row: str) -> float | None:
        base = {(r["col"], r["others"]): r for r in records if r["row"] == "fedavg"}
        per: dict[str, list[float]] = {}
        for r in records:
            b = base.get((r["col"], r["others"]))
            if r["row"] != row or b is None:
                continue
            d_ma = (r["main_accuracy"] - b["main_accuracy"]) / b["main_accuracy"]
            x, ref = r["backdoor_accuracy"], b["backdoor_accuracy"]
            d_ba = (x - ref) / ref if x is not None and ref else 0.0
            per.setdefault(r["col"], []).append(d_ma - d_ba)
        return sum(sum(v) / len(v) for v in per.values()) if per else None

    s = ranking_scores(records, "fedavg")
    for row in ("fedavg", "median", "flame"):
        assert s[row] == pytest.approx(old(row))
    assert s["median"] == pytest.approx(0.05 + ((-0.05 + 0.9) + 0.1) / 2)


# ---------------------------------------------------------------- tables and reports


def test_poisoning_table_has_ma_and_drop_per_attack_and_no_ba(grids: dict[str, Any]) -> None:
    g = grids["small"]
    assert leaderboard_table(g, cell_records(g, [Outcome(c, "not run") for c in g.cells])).headers[:4] == [
        "none MA",
        "none BA",
        "sign_flip MA",
        "sign_flip BA",
    ]  # nothing ran: every BA column stays
    ma = {(a, d.label): 0.9 - 0.05 * i for i, a in enumerate(ATTACKS) for d in g.axes["defense"]}
    ma[("alie", "median")] = 0.75
    recs = cell_records(g, _fake_outcomes(g, ma))
    t = leaderboard_table(g, recs)
    expected = ["none MA"] + [h for a in ATTACKS[1:] for h in (f"{a} MA", f"{a} MA drop")]
    assert t.headers == [*expected, "TPR", "FPR", "score"]
    row = dict(t.rows)["median"]
    assert row[t.headers.index("alie MA drop")] == pytest.approx(0.15)
    assert row[t.headers.index("alie MA")] == pytest.approx(0.75)
    assert dict(t.rows)["fedavg"][-1] == pytest.approx(0.0)
    md = render_markdown(g, t, recs)
    assert "| defense | none MA | sign_flip MA | sign_flip MA drop |" in md
    assert "final.accuracy_drop" in md and "Σ_untargeted attacks mean_o[ΔMA]" in md
    assert "Backdoor columns (ΔMA − ΔBA): –; MA-only columns (ΔMA): none, sign_flip, gaussian" in md


def test_backdoor_grid_keeps_ba_and_gains_a_drop_column() -> None:
    g = load_grid(ROOT / "scenarios" / "backdoor_defense_grid.toml")
    ma = {(a.label, d.label): 0.9 for a in g.axes["attack"] for d in g.axes["defense"]}
    ma[("pgd", "median")] = 0.8
    recs = cell_records(g, _fake_outcomes(g, ma, ba={"model_replacement": 0.9, "pgd": 0.6}))
    t = leaderboard_table(g, recs)
    assert t.headers[:7] == [
        "none MA",
        "none BA",
        "model_replacement MA",
        "model_replacement BA",
        "model_replacement MA drop",
        "pgd MA",
        "pgd BA",
    ]
    assert dict(t.rows)["median"][t.headers.index("pgd MA drop")] == pytest.approx(0.1)
    md = render_markdown(g, t, recs)
    assert "Backdoor columns (ΔMA − ΔBA): model_replacement, pgd; MA-only columns (ΔMA): none." in md


def test_write_reports_puts_the_drop_in_csv_html_and_a_heatmap(grids: dict[str, Any], tmp_path: Path) -> None:
    g = grids["small"]
    ma = {(a, d.label): 0.9 - 0.05 * i for i, a in enumerate(ATTACKS) for d in g.axes["defense"]}
    run = type("R", (), {"grid": g, "out_dir": tmp_path, "cells": _fake_outcomes(g, ma)})()
    paths = write_reports(run)
    assert paths["heatmap_accuracy_drop"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == len(g.cells)
    by = {(r["attack"], r["defense"]): r["accuracy_drop"] for r in rows}
    assert float(by[("ipm", "rfa")]) == pytest.approx(0.05 * ATTACKS.index("ipm"))
    html = paths["html"].read_text()
    assert 'data-key="accuracy_drop"' in html and 'data-key="alie:accuracy_drop"' in html
    assert "final.accuracy_drop" in html


def test_benchmark_table_prints_ma_drop_and_ranking(grids: dict[str, Any]) -> None:
    spec = importlib.util.spec_from_file_location(
        "poisoning_table", ROOT / "benchmarks" / "poisoning_table.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    g = grids["small"]
    ma = {(a, d.label): 0.9 for a in ATTACKS for d in g.axes["defense"]}
    ma[("alie", "median")] = 0.7
    del ma[("min_max", "bulyan")]
    text = mod.tables(g, _fake_outcomes(g, ma))
    assert "| defense | none | sign_flip |" in text and "| worst |" in text
    median_ma = next(line for line in text.splitlines() if line.startswith("| median | 90.0 |"))
    assert "| 70.0 |" in median_ma
    drop_lines = [line for line in text.splitlines() if line.startswith("| median | 0.0 |")]
    assert drop_lines and "| 20.0 |" in drop_lines[0]  # ALIE's drop in percentage points
    assert "| bulyan |" in text and "–" in next(
        line for line in text.splitlines() if line.startswith("| bulyan | 90.0 |")
    )
    ranking = [
        line for line in text.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()
    ]
    assert len(ranking) == len(g.axes["defense"]) and "median" in ranking[-1]  # the only defense hurt
