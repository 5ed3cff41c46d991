"""Untargeted poisoning vs robust aggregation (issue 18): Markdown tables from a grid's results store.

Reads the cells of a leaderboard grid (default ``scenarios/poisoning_small_grid.toml``) from its SQLite store
(default: the store the grid's scenarios name, as ``privsim leaderboard run`` uses) and prints

1. main accuracy (%) per defense × attack, the attack-free column ``none`` first, plus each defense's worst
   accuracy under attack;
2. the accuracy drop (percentage points) per defense × attack: MA of the attack-free cell of the same defense
   and other axes minus the cell's MA (positive = the attack hurt; ``simulator.leaderboard.report``), plus
   the mean and the largest drop;
3. the ranking: the leaderboard's score (relative MA change against the baseline row under each attack, and
   minus the relative BA change for backdoor attacks), highest first.

Values are means over the axes that are neither rows nor columns (alpha, seed ...); ``--split alpha`` prints
the tables once per label of that axis instead. The best value of each column is bold; cells not run (or
failed) show as "–". Run the grid first:

    privsim leaderboard run scenarios/poisoning_small_grid.toml --workers 1
    python benchmarks/poisoning_table.py [scenarios/poisoning_small_grid.toml] [--store S] [--split alpha]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

MISSING = "–"


def _mean(vals: list[float]) -> float | None:
    return sum(vals) / len(vals) if vals else None


def _matrix(
    records: list[dict[str, Any]], rows: list[str], cols: list[str], key: str
) -> dict[tuple[str, str], float | None]:
    """(row, col) -> mean of ``key`` over the records of that row and column (None without a value)."""
    return {
        (r, c): _mean(
            [
                x[key]
                for x in records
                if x["row"] == r and x["col"] == c and x["status"] != "failed" and x[key] is not None
            ]
        )
        for r in rows
        for c in cols
    }


def _render(
    label: str,
    headers: list[str],
    body: list[tuple[str, list[float | None]]],
    better: list[str],
    scale: float,
    digits: int = 1,
) -> list[str]:
    """A Markdown table; column ``j`` has its best value (``better[j]`` "max" / "min") in bold, unless all
    its values are equal."""
    best: list[float | None] = []
    for j, b in enumerate(better):
        vals = [v[j] for _, v in body if v[j] is not None]
        spread = len({round(v * scale, digits) for v in vals}) > 1
        best.append(None if not spread else (max(vals) if b == "max" else min(vals)))
    out = ["| " + " | ".join([label, *headers]) + " |", "|" + "---|" * (len(headers) + 1)]
    for name, vals in body:
        cells = []
        for j, v in enumerate(vals):
            txt = MISSING if v is None else f"{v * scale:.{digits}f}"
            cells.append(f"**{txt}**" if v is not None and v == best[j] else txt)
        out.append("| " + " | ".join([name, *cells]) + " |")
    return out


def tables(grid: Any, outcomes: list[Any], title: str = "") -> str:
    """The three Markdown tables (MA, accuracy drop, ranking) of ``outcomes`` (cells of ``grid``)."""
    from simulator.leaderboard.report import ATTACK_FREE, cell_records, ranking_scores, ranking_terms

    records = cell_records(grid, outcomes)
    rows = [e.label for e in grid.axes[grid.rows]] if grid.rows in grid.axes else ["all"]
    cols = [e.label for e in grid.axes[grid.columns]] if grid.columns in grid.axes else ["all"]
    attacks = [c for c in cols if c != ATTACK_FREE]
    ok = [r for r in records if r["status"] != "failed"]
    ma = _matrix(ok, rows, cols, "main_accuracy")
    drop = _matrix(ok, rows, attacks, "accuracy_drop")
    lines = [f"### {title or grid.name}", ""]
    n_done = sum(r["main_accuracy"] is not None for r in ok)
    lines += [f"{n_done} of {len(records)} cells have a main accuracy.", ""]

    lines += ["Main accuracy (%), higher is better; `worst` = lowest MA under attack.", ""]
    body = []
    for r in rows:
        under = [v for c in attacks if (v := ma[(r, c)]) is not None]
        body.append((r, [ma[(r, c)] for c in cols] + [min(under) if under else None]))
    lines += _render(grid.rows, [*cols, "worst"], body, ["max"] * (len(cols) + 1), 100.0)

    lines += [
        "",
        f"Accuracy drop (percentage points) = MA({ATTACK_FREE}) − MA(attack), same {grid.rows} and other "
        "axes; lower is better.",
        "",
    ]
    body = []
    for r in rows:
        vals = [v for c in attacks if (v := drop[(r, c)]) is not None]
        body.append((r, [drop[(r, c)] for c in attacks] + [_mean(vals), max(vals) if vals else None]))
    lines += _render(grid.rows, [*attacks, "mean", "max"], body, ["min"] * (len(attacks) + 2), 100.0)

    scores = ranking_scores(ok, baseline=grid.baseline)
    terms = ranking_terms(ok, baseline=grid.baseline)
    ranked = sorted(rows, key=lambda r: (scores.get(r) is None, -(scores.get(r) or 0.0)))
    lines += [
        "",
        f"Ranking: score = Σ over attacks of the relative MA change against '{grid.baseline}' under the same "
        "attack (minus the relative BA change for backdoor attacks); higher is better. "
        "`untargeted` = the part of the score from the attacks (without 'none').",
        "",
        f"| rank | {grid.rows} | score | untargeted | mean MA under attack (%) | worst MA (%) |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(ranked, 1):
        s = scores.get(r)
        part = sum(v for c, v in terms.get(r, {}).items() if c != ATTACK_FREE) if terms.get(r) else None
        under = [v for c in attacks if (v := ma[(r, c)]) is not None]
        cells = [
            MISSING if s is None else f"{s:+.3f}",
            MISSING if part is None else f"{part:+.3f}",
            MISSING if not under else f"{100 * sum(under) / len(under):.1f}",
            MISSING if not under else f"{100 * min(under):.1f}",
        ]
        lines.append(f"| {i} | {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("grid", nargs="?", default="scenarios/poisoning_small_grid.toml", help="grid TOML file")
    p.add_argument("--store", default=None, help="results store (default: the grid's default store)")
    p.add_argument(
        "--split", default=None, help="print one set of tables per label of this axis (e.g. alpha)"
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help="grid override key.path=value"
    )
    args = p.parse_args()

    from simulator.leaderboard import default_store, load_grid
    from simulator.leaderboard.report import outcomes_from_store

    grid = load_grid(Path(args.grid), args.overrides)
    store = Path(args.store) if args.store else default_store(grid)
    outcomes = outcomes_from_store(grid, store)
    print(f"## {grid.name} (store {store})\n")
    if grid.description:
        print(grid.description + "\n")
    if args.split is None:
        print(tables(grid, outcomes))
        return
    if args.split not in grid.axes:
        p.error(f"--split {args.split!r}: the grid's axes are {', '.join(grid.axes)}")
    for entry in grid.axes[args.split]:
        part = [o for o in outcomes if o.cell.labels.get(args.split) == entry.label]
        print(tables(grid, part, f"{grid.name}, {args.split} = {entry.label}"))


if __name__ == "__main__":
    main()
