"""Leaderboard outputs: metrics per cell, the ranking score, Markdown / CSV / HTML tables and heatmaps.

Metrics per cell (read from the run's summary; a missing key shows as "–" and never fails):

* integrity track: ``MA`` = ``final.main_accuracy``, ``BA`` = ``final.backdoor_accuracy``, ``TPR`` / ``FPR`` =
  ``defense.tpr`` / ``defense.fpr`` (mean detection rates over the rounds), and ``MA drop`` =
  ``accuracy_drop`` (below);
* privacy track: ``MA``, ``PSNR`` / ``SSIM`` / ``label acc`` = ``inversion.psnr`` / ``.ssim`` /
  ``.label_accuracy``; ``ε (record)`` and ``ε (client)`` = ``privacy.epsilon`` in the column of the run's
  ``privacy.level`` (record-level DP-SGD / input perturbation: the worst client's ε over its records;
  client-level DP-FedAvg or noisy sketches: the ε of one client's participation), and ``ε̂ (record audit)`` /
  ``ε̂ (client audit)`` = ``audit.epsilon_lower`` by ``audit.level``. The two kinds of ε protect different
  units and are never mixed in one column; an ε whose level the summary does not state (none is written so)
  gets a column of its own, ``ε (level not stated)``, shown only when some cell has one.

Values shown for people: an exact reconstruction (PSNR +∞, written "inf" in summary.json) is ``∞ (exact)``,
a value, sorted as the highest PSNR, never as missing; an ε of +∞ (a release without noise) is ``∞``. The
detection rates of an aggregator that never leaves a client out
(:attr:`defenses.base.Aggregator.selects_clients` False: FedAvg, median, trimmed mean, norm clipping ...)
are ``n/a``, not a measured 0. A cell finished in an earlier run and read back from the results store is
``done (stored)`` (:func:`status_text`).

Accuracy drop (integrity track; the measure of untargeted poisoning, issue 18): for a cell ``(d, a, o)`` --
defense ``d``, attack ``a``, ``o`` the labels of the other axes (alpha, seed ...) --::

    accuracy_drop[d,a,o] = MA[d,none,o] − MA[d,a,o]

the main accuracy the attack costs that defense; positive = the attack hurt, lower is better for the
defense; 0 on the attack-free cells themselves. The attack-free cells are those whose label on the attack
axis (the axis named ``"attack"``, else the ``columns`` axis) is ``"none"``; a cell without such a partner,
or either MA missing, has no drop. One run cannot compute it -- it needs the attack-free run -- so it is not
in any run's ``summary.json`` (:func:`cell_metrics` leaves it ``None``): the issue's ``final.accuracy_drop``
is this grid-level metric, filled in by :func:`cell_records` from the grid's cells.

Tables have one row per label of the grid's ``rows`` axis (defenses) and, per label of the ``columns`` axis
(attacks), a group of columns: ``MA``, ``BA`` and ``MA drop`` (the drop only for the attacks other than
``"none"``, when the grid has a ``"none"`` column). ``BA`` is left out for an untargeted attack (a column that
ran -- some cell has an MA -- and no cell of which has a BA), and for ``"none"`` when every other column is
such an attack; before anything ran every column keeps its BA. Cells that differ only on the other axes
(seeds, alphas ...) are averaged (missing values are ignored). The best value of each column is bold
(highest MA / TPR / score, lowest BA / MA drop / FPR / PSNR / SSIM / label accuracy / ε).

Ranking score (integrity track; after the Multi-metrics paper, Huang et al., ICCV 2023): for defense ``d``
with the baseline ``f`` (row label ``"fedavg"`` unless the grid sets ``baseline``), with relative changes
``ΔX[d,a,o] = (X[d,a,o] − X[f,a,o]) / X[f,a,o]``::

    score(d) =   Σ_{a backdoor}    mean_o [ ΔMA[d,a,o] − ΔBA[d,a,o] ]
               + Σ_{a untargeted}  mean_o   ΔMA[d,a,o]

where ``o`` runs over the combinations of the other axes for which both the ``d`` and the ``f`` cell have an
MA. A *backdoor* attack is a column some cell of which has a BA; every other column -- untargeted poisoning
(sign flip, ALIE, Min-Max, label flipping ...) and the attack-free ``"none"`` -- is *untargeted* and adds its
relative MA change only. Within a backdoor column a BA term is 0 when either BA is missing or ``BA[f] = 0``
(so backdoor-only grids score exactly as before untargeted attacks existed). An attack with no pair adds
nothing; ``MA[f] = 0`` pairs are left out. Higher is better: the defense keeps main accuracy and cuts
backdoor accuracy relative to FedAvg; the baseline scores 0. ``None`` when there is no pair at all. The
untargeted term is relative to the baseline under the same attack, so it grows large where the attack breaks
FedAvg: a defense keeping 90 % where FedAvg falls to 10 % adds (0.9 − 0.1) / 0.1 = 8.

Files written by :func:`write_reports` into the leaderboard folder: ``leaderboard.md``, ``leaderboard.csv``
(one row per cell; missing values are empty fields), ``heatmap_<metric>.png`` (rows × columns, annotated),
``curve_<metric>.png`` when every ``columns`` label is a number (a defense strength: noise σ, pruning ratio,
sketch ratio ...; one line per row, mean ± standard deviation over the other axes, e.g. "PSNR vs σ") and
``leaderboard.html`` (self-contained: heatmaps embedded as data URIs, tables sortable by clicking a header --
numeric columns sort numerically, missing values last;
``leaderboard.html?table=cells&sort=main_accuracy&dir=desc`` applies a sort on load by clicking that header;
per-cell links to the cell's plots).
"""

from __future__ import annotations

import base64
import csv
import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.console import Console
from rich.table import Table as RichTable

from defenses.base import AGGREGATORS
from simulator.leaderboard.grid import Grid
from simulator.plots import fit_text, pyplot, save_figure, text_height, wrap
from simulator.results import ResultsStore

__all__ = [
    "ATTACK_FREE",
    "INTEGRITY_METRICS",
    "MISSING",
    "NOT_APPLICABLE",
    "PRIVACY_METRICS",
    "CellOutcome",
    "Metric",
    "Table",
    "add_accuracy_drop",
    "attack_axis",
    "backdoor_columns",
    "cell_metrics",
    "cell_records",
    "curve_figure",
    "format_value",
    "heatmap_figure",
    "integrity_notes",
    "leaderboard_table",
    "outcomes_from_store",
    "print_tables",
    "ranking_scores",
    "ranking_terms",
    "render_html",
    "render_markdown",
    "status_text",
    "value_notes",
    "write_csv",
    "write_curves",
    "write_heatmaps",
    "write_reports",
]

MISSING = "–"
NOT_APPLICABLE = "n/a"  # a detection rate of an aggregator that never leaves a client out
STORED = "done (stored)"  # how a cell finished in an earlier run (status "skipped") is shown
ATTACK_FREE = "none"  # the attack-axis label of the attack-free cells (the reference of ``accuracy_drop``)


@dataclass(frozen=True)
class Metric:
    """A reported metric: its key in :func:`cell_metrics`, its column header, and which way is better."""

    key: str
    header: str
    better: Literal["max", "min"]


INTEGRITY_METRICS = (
    Metric("main_accuracy", "MA", "max"),
    Metric("backdoor_accuracy", "BA", "min"),
    Metric("accuracy_drop", "MA drop", "min"),
    Metric("tpr", "TPR", "max"),
    Metric("fpr", "FPR", "min"),
)
PRIVACY_METRICS = (
    Metric("main_accuracy", "MA", "max"),
    Metric("psnr", "PSNR", "min"),
    Metric("ssim", "SSIM", "min"),
    Metric("label_accuracy", "label acc", "min"),
    Metric("epsilon_record", "ε (record)", "min"),
    Metric("epsilon_client", "ε (client)", "min"),
    Metric("epsilon_unstated", "ε (level not stated)", "min"),
    Metric("epsilon_lower_record", "ε̂ (record audit)", "min"),
    Metric("epsilon_lower_client", "ε̂ (client audit)", "min"),
    Metric("epsilon_lower_unstated", "ε̂ (audit)", "min"),
)
#: columns shown only when some cell has a value (never in an empty table)
_ONLY_WITH_DATA = frozenset({"epsilon_unstated", "epsilon_lower_unstated"})
#: the detection rates, "n/a" for an aggregator that never leaves a client out
_DETECTION = frozenset({"tpr", "fpr"})
ALL_KEYS = (
    "main_accuracy",
    "backdoor_accuracy",
    "accuracy_drop",
    "tpr",
    "fpr",
    "psnr",
    "ssim",
    "label_accuracy",
    "epsilon",
    "epsilon_lower",
    "epsilon_record",
    "epsilon_client",
    "epsilon_lower_record",
    "epsilon_lower_client",
    "bytes_up_per_round",
    "wall_time_s",
)


_INF = {"inf": math.inf, "+inf": math.inf, "infinity": math.inf, "-inf": -math.inf, "-infinity": -math.inf}


def _num(x: Any) -> float | None:
    """A number from a summary value: ``None`` for anything missing, NaN or not numeric; ±∞ stays
    (summary.json writes it as the string "inf" / "-inf": an exact reconstruction's PSNR, an ε without
    noise)."""
    if isinstance(x, str):
        x = _INF.get(x.strip().lower())
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return None if math.isnan(x) else float(x)


def _psnr(inv: dict[str, Any]) -> float | None:
    """The inversion block's mean PSNR; +∞ for an exact reconstruction, also as older files wrote it (PSNR
    ``null`` with MSE 0)."""
    p = _num(inv.get("psnr"))
    if p is None and inv.get("psnr") is None and _num(inv.get("mse")) == 0.0:
        return math.inf
    return p


def _level(block: dict[str, Any]) -> str | None:
    """``"record"`` or ``"client"``: the unit a privacy (or audit) block's ε is about, from its ``level``
    (``"record"``, ``"client"``, ``"client (sketch)"``), else from its ledger view (``"records"`` is record
    level, every other view -- aggregate, update in the clear, forced target -- client level); ``None`` when
    the block states neither."""
    level = block.get("level")
    if isinstance(level, str):
        for unit in ("record", "client"):
            if level.strip().lower().startswith(unit):
                return unit
    view = block.get("epsilon_view")
    if isinstance(view, str):
        return "record" if view == "records" else "client"
    return None


_UNITS = ("record", "client", "unstated")


def _by_level(key: str, value: float | None, level: str | None) -> dict[str, float | None]:
    """``{key_record, key_client, key_unstated}``: ``value`` in the one for ``level``, ``None`` in the
    others."""
    return {f"{key}_{u}": value if level == (None if u == "unstated" else u) else None for u in _UNITS}


def _block(summary: dict[str, Any], key: str) -> dict[str, Any]:
    v = summary.get(key)
    return v if isinstance(v, dict) else {}


def cell_metrics(summary: dict[str, Any] | None) -> dict[str, float | None]:
    """All leaderboard metrics of one run summary (``None`` for anything missing or non-numeric; +∞ kept).

    ``epsilon`` / ``epsilon_lower`` are the headline ε and audit ε̂ whatever their level (the CSV keeps them);
    the tables show them split by level: ``epsilon_record`` / ``epsilon_client`` / ``epsilon_unstated`` and
    the same for ``epsilon_lower`` (:func:`_level`; an audit block without a level takes the run's privacy
    level).

    ``accuracy_drop`` is always ``None`` here: it compares the run with the attack-free run of the same
    defense and other axes, which a single summary does not hold; :func:`cell_records` fills it in from the
    grid's cells (:func:`add_accuracy_drop`).
    """
    s = summary if isinstance(summary, dict) else {}
    final, defense, inv, priv, audit = (
        _block(s, k) for k in ("final", "defense", "inversion", "privacy", "audit")
    )
    eps, eps_lower = _num(priv.get("epsilon")), _num(audit.get("epsilon_lower"))
    level = _level(priv)
    return {
        "main_accuracy": _num(final.get("main_accuracy")),
        "backdoor_accuracy": _num(final.get("backdoor_accuracy")),
        "accuracy_drop": None,  # grid-level: needs the attack-free cell (add_accuracy_drop)
        "tpr": _num(defense.get("tpr")),
        "fpr": _num(defense.get("fpr")),
        "psnr": _psnr(inv),
        "ssim": _num(inv.get("ssim")),
        "label_accuracy": _num(inv.get("label_accuracy")),
        "epsilon": eps,  # the ledger's upper bound (worst view), whatever its level
        "epsilon_lower": eps_lower,  # the audit's lower bound, beside it
        **_by_level("epsilon", eps, level),
        **_by_level("epsilon_lower", eps_lower, _level(audit) or level),
        "wall_time_s": _num(s.get("wall_time_s")),
        "bytes_up_per_round": _num(_block(s, "communication").get("bytes_up_per_round")),
    }


def _rel(x: float | None, ref: float | None) -> float | None:
    if x is None or ref is None or ref == 0:
        return None
    return (x - ref) / ref


def backdoor_columns(records: list[dict[str, Any]]) -> set[str]:
    """The column labels (attacks) some cell of which has a backdoor accuracy; the others are untargeted."""
    return {r["col"] for r in records if _num(r.get("backdoor_accuracy")) is not None}


def ranking_terms(records: list[dict[str, Any]], baseline: str = "fedavg") -> dict[str, dict[str, float]]:
    """Each row's per-attack term of the ranking score (formula in the module docstring).

    The term of a backdoor column (:func:`backdoor_columns`) is ``mean_o [ΔMA − ΔBA]``, that of an untargeted
    column (no cell with a BA, including ``"none"``) ``mean_o ΔMA``, both against the ``baseline`` row.

    Parameters
    ----------
    records
        As for :func:`ranking_scores`.
    baseline
        The row label compared against.

    Returns
    -------
    dict
        Row label -> {column label -> term}, for the columns with at least one pair (rows without any pair
        map to an empty dict).
    """
    base = {(r["col"], r["others"]): r for r in records if r["row"] == baseline}
    targeted = backdoor_columns(records)
    rows = list(dict.fromkeys(r["row"] for r in records))
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        per_attack: dict[str, list[float]] = {}
        for r in records:
            if r["row"] != row:
                continue
            b = base.get((r["col"], r["others"]))
            if b is None:
                continue
            d_ma = _rel(_num(r.get("main_accuracy")), _num(b.get("main_accuracy")))
            if d_ma is None:
                continue
            d_ba = None
            if r["col"] in targeted:
                d_ba = _rel(_num(r.get("backdoor_accuracy")), _num(b.get("backdoor_accuracy")))
            per_attack.setdefault(r["col"], []).append(d_ma - (d_ba if d_ba is not None else 0.0))
        out[row] = {col: sum(v) / len(v) for col, v in per_attack.items()}
    return out


def ranking_scores(records: list[dict[str, Any]], baseline: str = "fedavg") -> dict[str, float | None]:
    """The ranking score of each row label (defense): the Multi-metrics score (relative MA change minus
    relative BA change) on backdoor attacks plus the relative MA change on untargeted ones; formula in the
    module docstring.

    Parameters
    ----------
    records
        One dict per cell with ``row`` (defense label), ``col`` (attack label), ``others`` (a hashable of the
        other axes' labels), ``main_accuracy`` and ``backdoor_accuracy`` (``None`` when missing). A column is
        a backdoor attack when one of its records has a backdoor accuracy, else untargeted.
    baseline
        The row label compared against.

    Returns
    -------
    dict
        Row label -> score (``None`` when the row has no cell paired with a baseline cell).
    """
    return {
        row: (sum(terms.values()) if terms else None)
        for row, terms in ranking_terms(records, baseline).items()
    }


#: a table entry: a number, ``None`` (missing: "–") or a fixed text (:data:`NOT_APPLICABLE`)
Value = float | str | None


@dataclass
class Table:
    """A rendered-agnostic table: a label column, then numeric columns with a 'better' direction each."""

    title: str
    label_header: str
    headers: list[str]
    keys: list[str]
    better: list[str | None]
    rows: list[tuple[str, list[Value]]] = field(default_factory=list)

    def best(self) -> list[float | None]:
        """The best value of each column (``None`` when the column has no number or no direction)."""
        out: list[float | None] = []
        for j, b in enumerate(self.better):
            vals = [v for v in (r[1][j] for r in self.rows) if isinstance(v, float)]
            out.append(None if not vals or b is None else (max(vals) if b == "max" else min(vals)))
        return out


def format_value(x: Value, key: str = "") -> str:
    """A table entry for people: 4 decimals (1 from 1000 on), "–" when missing, ``∞ (exact)`` for an
    infinite PSNR (``key`` is the metric key, or ``"<column>:<metric key>"``), ``∞`` for any other infinity,
    fixed texts as they are.

    >>> format_value(math.inf, "0:psnr"), format_value(math.inf, "epsilon_client"), format_value(None)
    ('∞ (exact)', '∞', '–')
    """
    if x is None:
        return MISSING
    if isinstance(x, str):
        return x
    if math.isinf(x):
        if x < 0:
            return "−∞"
        return "∞ (exact)" if key.rsplit(":", 1)[-1] == "psnr" else "∞"
    return f"{x:.4f}" if abs(x) < 1000 else f"{x:.1f}"


def status_text(status: str) -> str:
    """A cell's status as the page, the Markdown, the CSV and the terminal show it: a cell finished in an
    earlier run (the grid runner's ``"skipped"``: not run again) is ``"done (stored)"``."""
    return STORED if status == "skipped" else status


def _selects_clients(cell: Any) -> bool:
    """Whether the cell's aggregator may leave clients out (:attr:`~defenses.base.Aggregator.selects_clients`;
    True when the cell or its aggregator cannot be told, so that measured rates are never hidden)."""
    try:
        name = cell.scenario.defenses.aggregator.name
    except AttributeError:
        return True
    if name not in AGGREGATORS:
        return True
    return bool(getattr(AGGREGATORS.get(name).factory, "selects_clients", True))


def _cell_value(r: dict[str, Any], key: str) -> Value:
    """A record's metric as shown: :data:`NOT_APPLICABLE` for a detection rate of an aggregator that never
    leaves a client out."""
    if key in _DETECTION and not r.get("selects_clients", True):
        return NOT_APPLICABLE
    v: float | None = r[key]
    return v


def _axis_labels(grid: Grid, axis: str, present: list[str]) -> list[str]:
    if axis in grid.axes:
        return [e.label for e in grid.axes[axis] if e.label in present]
    return list(dict.fromkeys(present))


def attack_axis(grid: Grid) -> str:
    """The axis whose ``"none"`` label marks the attack-free cells: ``"attack"`` if the grid has it, else the
    ``columns`` axis."""
    return "attack" if "attack" in grid.axes else grid.columns


def add_accuracy_drop(records: list[dict[str, Any]], axes: Sequence[str], attack: str) -> None:
    """Set each record's ``accuracy_drop`` (in place): the MA of its attack-free partner -- the record with
    ``"none"`` on the ``attack`` axis and the same labels on every other axis in ``axes`` -- minus its own MA;
    ``None`` without a finished partner or an MA. Failed records are never a partner."""

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(r.get(a) for a in axes if a != attack)

    ref = {
        key(r): r["main_accuracy"]
        for r in records
        if r.get(attack) == ATTACK_FREE and r.get("status") != "failed" and r.get("main_accuracy") is not None
    }
    for r in records:
        ma, ref_ma = _num(r.get("main_accuracy")), _num(ref.get(key(r)))
        ok = r.get("status") != "failed"
        r["accuracy_drop"] = ref_ma - ma if ok and ma is not None and ref_ma is not None else None


def cell_records(grid: Grid, outcomes: list[Any]) -> list[dict[str, Any]]:
    """One flat record per cell outcome: axis labels, row/col/others keys, status, metrics, folder.

    The integrity track's ``accuracy_drop`` is computed here, across cells (:func:`add_accuracy_drop`).
    ``selects_clients`` is the cell aggregator's :attr:`~defenses.base.Aggregator.selects_clients`; when it is
    False the record's ``tpr`` / ``fpr`` are ``None`` (0 by construction, not a measurement) and the tables
    show them as :data:`NOT_APPLICABLE`.
    """
    recs = []
    for o in outcomes:
        c = o.cell
        m = cell_metrics(o.summary)
        selects = _selects_clients(c)
        if not selects:
            m["tpr"] = m["fpr"] = None
        others = tuple((a, v) for a, v in c.labels.items() if a not in (grid.rows, grid.columns))
        out_dir = (o.summary or {}).get("out_dir") if isinstance(o.summary, dict) else None
        recs.append(
            {
                **c.labels,
                "row": c.labels.get(grid.rows, "all"),
                "col": c.labels.get(grid.columns, "all"),
                "others": others,
                "label_path": c.label_path,
                "digest": c.digest,
                "status": o.status,
                "reason": o.reason,
                "out_dir": out_dir,
                "selects_clients": selects,
                **m,
            }
        )
    if grid.track == "integrity":
        add_accuracy_drop(recs, list(grid.axes), attack_axis(grid))
    return recs


def _with_data(metrics: tuple[Metric, ...], records: list[dict[str, Any]]) -> list[Metric]:
    """The metrics that at least one record has (when none has any, all of them but the ``level not stated``
    ones, so the table still shows)."""
    return [m for m in metrics if any(r[m.key] is not None for r in records)] or [
        m for m in metrics if m.key not in _ONLY_WITH_DATA
    ]


def _untargeted(col: str, records: list[dict[str, Any]]) -> bool:
    """A column (attack) that ran (some cell has an MA) and has no backdoor accuracy anywhere."""
    mine = [r for r in records if r["col"] == col]
    return (
        col != ATTACK_FREE
        and any(r["main_accuracy"] is not None for r in mine)
        and all(r["backdoor_accuracy"] is None for r in mine)
    )


def _integrity_groups(grid: Grid, cols: list[str], records: list[dict[str, Any]]) -> list[tuple[str, Metric]]:
    """The (column label, metric) pairs of the integrity table: MA, BA and MA drop per attack (see the module
    docstring: no BA for untargeted attacks; no drop for ``"none"`` itself, nor in a grid without it)."""
    ma, ba, drop = (
        next(m for m in INTEGRITY_METRICS if m.key == k)
        for k in ("main_accuracy", "backdoor_accuracy", "accuracy_drop")
    )
    untargeted = {c for c in cols if _untargeted(c, records)}
    attacks = [c for c in cols if c != ATTACK_FREE]
    no_ba = set(untargeted)
    if attacks and set(attacks) <= untargeted:
        no_ba.add(ATTACK_FREE)
    with_drop = grid.columns == attack_axis(grid) and ATTACK_FREE in cols
    out: list[tuple[str, Metric]] = []
    for c in cols:
        out.append((c, ma))
        if c not in no_ba:
            out.append((c, ba))
        if with_drop and c != ATTACK_FREE:
            out.append((c, drop))
    return out


def leaderboard_table(grid: Grid, records: list[dict[str, Any]]) -> Table:
    """The per-track table: rows = defenses, columns = attacks × metrics (+ detection rates and score)."""
    rows = _axis_labels(grid, grid.rows, [r["row"] for r in records])
    cols = _axis_labels(grid, grid.columns, [r["col"] for r in records])
    ok = [r for r in records if r["status"] != "failed"]

    def mean(row: str, col: str | None, key: str) -> float | None:
        vals = [
            r[key] for r in ok if r["row"] == row and (col is None or r["col"] == col) and r[key] is not None
        ]
        return sum(vals) / len(vals) if vals else None

    def rate(row: str, key: str) -> Value:
        """A detection rate over the row's cells: n/a when no cell's aggregator ever leaves a client out."""
        mine = [r for r in ok if r["row"] == row]
        if mine and not any(r["selects_clients"] for r in mine):
            return NOT_APPLICABLE
        return mean(row, None, key)

    if grid.track == "integrity":
        groups = _integrity_groups(grid, cols, ok)
        tail = [m for m in INTEGRITY_METRICS if m.key in ("tpr", "fpr")]
        title = "Integrity track: main accuracy (MA) / backdoor accuracy (BA) / MA drop"
    else:  # a leakage grid has no MA or ε, a DP grid no PSNR: show the metrics some cell has
        groups, tail = [(c, m) for c in cols for m in _with_data(PRIVACY_METRICS, ok)], []
        title = "Privacy track: main accuracy / inversion PSNR, SSIM, label accuracy / ε (record, client)"
    headers = [f"{c} {m.header}" for c, m in groups] + [m.header for m in tail]
    keys = [f"{c}:{m.key}" for c, m in groups] + [m.key for m in tail]
    better: list[str | None] = [*(m.better for _c, m in groups), *(m.better for m in tail)]
    scores: dict[str, float | None] = {}
    if grid.track == "integrity":
        scores = ranking_scores(ok, baseline=grid.baseline)
        headers.append("score")
        keys.append("score")
        better.append("max")
    t = Table(title=title, label_header=grid.rows, headers=headers, keys=keys, better=better)
    for row in rows:
        vals: list[Value] = [mean(row, c, m.key) for c, m in groups]
        vals += [rate(row, m.key) for m in tail]
        if grid.track == "integrity":
            vals.append(scores.get(row))
        t.rows.append((row, vals))
    return t


def integrity_notes(grid: Grid, records: list[dict[str, Any]]) -> list[str]:
    """The integrity track's explanations under the table: MA drop and the ranking-score formula, with the
    grid's backdoor and untargeted columns named."""
    cols = _axis_labels(grid, grid.columns, [r["col"] for r in records])
    ok = [r for r in records if r["status"] != "failed"]
    targeted = backdoor_columns(ok)
    f = grid.baseline
    notes = [
        f"MA drop = MA of the attack-free cell ({attack_axis(grid)} = '{ATTACK_FREE}') of the same "
        f"{grid.rows} and other axes − the cell's MA; positive = the attack cost accuracy, lower is better. "
        "A single run cannot compute it (it needs the attack-free run), so it is not in any cell's "
        "summary.json: the issue's final.accuracy_drop is this grid-level column (also in leaderboard.csv "
        "and heatmap_accuracy_drop.png).",
        f"score(d) = Σ_backdoor attacks mean_o[ΔMA − ΔBA] + Σ_untargeted attacks mean_o[ΔMA], with "
        f"ΔX = (X[d,a,o] − X[{f},a,o]) / X[{f},a,o] against '{f}' under the same attack a and other axes o; "
        "higher is better, the baseline scores 0. A backdoor attack is a column with a BA; the others "
        "(untargeted poisoning and 'none') count their relative MA change only.",
    ]
    bd = [c for c in cols if c in targeted]
    un = [c for c in cols if c not in targeted]
    if bd or un:
        notes.append(
            f"Backdoor columns (ΔMA − ΔBA): {', '.join(bd) or MISSING}; "
            f"MA-only columns (ΔMA): {', '.join(un) or MISSING}."
        )
    return notes


def _is_best(v: Value, best: float | None) -> bool:
    return isinstance(v, float) and best is not None and v == best


def value_notes(table: Table) -> list[str]:
    """What the table's special values mean, for those it shows: ``∞ (exact)``, ``n/a`` and the two kinds of
    ε."""
    vals = [(k, v) for _label, row in table.rows for k, v in zip(table.keys, row)]
    notes = []
    if any(k.rsplit(":", 1)[-1] == "psnr" and isinstance(v, float) and v == math.inf for k, v in vals):
        notes.append(
            "PSNR ∞ (exact): the reconstruction equals the original (MSE 0), the attack's best possible "
            "result; it sorts as the highest PSNR. A mean over cells is ∞ when one of them is."
        )
    if any(v == NOT_APPLICABLE for _k, v in vals):
        notes.append(
            "TPR / FPR n/a: the aggregator never leaves a client out (FedAvg, median, trimmed mean, norm "
            "clipping ...: Aggregator.selects_clients is False), so there is no detection to measure."
        )
    units = {k.rsplit(":", 1)[-1] for k, v in vals if isinstance(v, float)}
    if units & {"epsilon_record", "epsilon_client", "epsilon_lower_record", "epsilon_lower_client"}:
        notes.append(
            "ε (record): record-level DP (DP-SGD, input perturbation), the worst client's ε for one of its "
            "records; ε (client): client-level DP (DP-FedAvg, noisy sketches), the ε of one client's whole "
            "participation. They protect different units and are not comparable; ε̂ is the audit's lower "
            "bound at the same level."
        )
    return notes


def render_markdown(grid: Grid, table: Table, records: list[dict[str, Any]]) -> str:
    """``leaderboard.md``: the track table with the best value per column in bold, then cell status."""
    best = table.best()
    lines = [f"# Leaderboard: {grid.name}", ""]
    if grid.description:
        lines += [grid.description, ""]
    lines += [f"## {table.title}", ""]
    lines.append("| " + " | ".join([table.label_header, *table.headers]) + " |")
    lines.append("|" + "---|" * (len(table.headers) + 1))
    for label, vals in table.rows:
        cells = [format_value(v, k) for v, k in zip(vals, table.keys)]
        cells = [f"**{c}**" if _is_best(v, b) else c for c, v, b in zip(cells, vals, best)]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    others = [a for a in grid.axes if a not in (grid.rows, grid.columns)]
    if others:
        lines += ["", f"Values are means over {', '.join(others)}."]
    for note in value_notes(table):
        lines += ["", note]
    if grid.track == "integrity":
        for note in integrity_notes(grid, records):
            lines += ["", note]
    failed = [r for r in records if r["status"] == "failed"]
    lines += [
        "",
        f"{len(records)} cells: {sum(r['status'] == 'completed' for r in records)} run now, "
        f"{sum(r['status'] == 'skipped' for r in records)} {STORED}, {len(failed)} failed, "
        f"{sum(r['status'] == 'not run' for r in records)} not run.",
    ]
    for r in failed:
        lines.append(f"- failed: `{r['label_path']}`: {r['reason']}")
    return "\n".join(lines) + "\n"


def write_csv(grid: Grid, records: list[dict[str, Any]], path: Path) -> None:
    """``leaderboard.csv``: one row per cell, every metric (missing values are empty, ±∞ are ``inf`` /
    ``-inf``, detection rates of an aggregator that never leaves a client out are ``n/a``; status as
    :func:`status_text` shows it)."""
    axes = list(grid.axes)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*axes, "status", "reason", "digest", *ALL_KEYS, "out_dir"])
        for r in records:
            w.writerow(
                [r.get(a, "") for a in axes]
                + [status_text(r["status"]), r["reason"] or "", r["digest"]]
                + ["" if (v := _cell_value(r, k)) is None else v for k in ALL_KEYS]
                + [r["out_dir"] or ""]
            )


def _mean_std(records: list[dict[str, Any]], rows: list[str], cols: list[str], key: str) -> tuple[Any, Any]:
    """Mean and standard deviation of ``key`` per (row, column) over the other axes (NaN where no value)."""
    mean = np.full((len(rows), len(cols)), np.nan)
    std = np.full((len(rows), len(cols)), np.nan)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            vals = [
                r[key]
                for r in records
                if r["row"] == row and r["col"] == col and r["status"] != "failed" and r[key] is not None
            ]
            if vals:
                finite = all(math.isfinite(v) for v in vals)
                mean[i, j] = float(np.mean(vals)) if finite else float(sum(vals) / len(vals))
                std[i, j] = float(np.std(vals)) if finite else 0.0  # an infinite mean has no spread
    return mean, std


def _not_applicable(records: list[dict[str, Any]], rows: list[str], cols: list[str], key: str) -> Any:
    """Per (row, column): True where ``key`` is a detection rate and no cell's aggregator ever leaves a
    client out (the heatmap writes "n/a" there, not "–")."""
    na = np.zeros((len(rows), len(cols)), dtype=bool)
    if key not in _DETECTION:
        return na
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            mine = [r for r in records if r["row"] == row and r["col"] == col and r["status"] != "failed"]
            na[i, j] = bool(mine) and not any(r["selects_clients"] for r in mine)
    return na


def _plotted(grid: Grid, records: list[dict[str, Any]]) -> tuple[list[str], list[str], tuple[Metric, ...]]:
    """The row labels, column labels (in the grid's order) and the track's metrics that the plots draw."""
    rows = _axis_labels(grid, grid.rows, [r["row"] for r in records])
    cols = _axis_labels(grid, grid.columns, [r["col"] for r in records])
    return rows, cols, INTEGRITY_METRICS if grid.track == "integrity" else PRIVACY_METRICS


def numeric_columns(cols: list[str]) -> list[float] | None:
    """The column labels as numbers (``"0"``, ``"1e-3"``, ``"0.25"``), or None when one is not a number."""
    try:
        xs = [float(c) for c in cols]
    except ValueError:
        return None
    return xs if all(math.isfinite(x) for x in xs) else None


def _better(m: Metric) -> str:
    return "higher" if m.better == "max" else "lower"


def curve_figure(grid: Grid, records: list[dict[str, Any]], metric: Metric) -> Any:
    """The figure of ``curve_<metric>.png`` (see :func:`write_curves`), or ``None`` when there is nothing to
    draw. An infinite mean (an exact reconstruction, PSNR +∞) is drawn as a triangle on the top edge."""
    plt = pyplot()
    rows, cols, _ = _plotted(grid, records)
    xs = numeric_columns(cols)
    if xs is None or len(cols) < 2:
        return None
    mean, std = _mean_std(records, rows, cols, metric.key)
    if np.isnan(mean).all():
        return None
    order = np.argsort(xs)
    x = np.asarray(xs)[order]
    pos = x[x > 0]
    size, fs = (6.0, 4.0), 10.0
    fig, ax = plt.subplots(figsize=size, dpi=100, layout="constrained")
    top = ax.get_xaxis_transform()  # x in data, y in axes coordinates
    shown_inf = False
    for i, row in enumerate(rows):
        y, e = mean[i][order], std[i][order]
        if np.isnan(y).all():
            continue
        inf = np.isposinf(y)
        line = ax.errorbar(
            x, np.where(inf, np.nan, y), yerr=np.nan_to_num(e), marker="o", ms=4, capsize=3, label=row
        )
        if inf.any():
            ax.plot(
                x[inf],
                np.full(int(inf.sum()), 0.97),
                ls="none",
                marker="^",
                ms=8,
                color=line.lines[0].get_color(),
                transform=top,
                clip_on=False,
                label=None if shown_inf else f"{metric.header} ∞ (exact)",
            )
            shown_inf = True
    if pos.size >= 2 and pos.max() / pos.min() >= 100:
        if (x <= 0).any():
            ax.set_xscale("symlog", linthresh=float(pos.min()))
        else:
            ax.set_xscale("log")
    ax.set_xlabel(grid.columns)
    ax.set_ylabel(metric.header)
    title = f"{grid.name}: {metric.header} vs {grid.columns} ({_better(metric)} is better)"
    ax.set_title(wrap(title, size[0] - 0.8, fs), fontsize=fs)
    ax.grid(alpha=0.3)
    ax.legend(title=grid.rows, fontsize=8)
    fit_text(fig)
    return fig


def write_curves(grid: Grid, records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``curve_<metric>.png``: the metric against the numeric ``columns`` axis (a defense strength), one line
    per row, mean ± standard deviation over the other axes. Nothing when a column label is not a number or
    there are fewer than two columns. The x axis is logarithmic when the positive values span two decades or
    more (with a linear stretch around 0 when 0 is one of them)."""
    written = []
    for m in _plotted(grid, records)[2]:
        fig = curve_figure(grid, records, m)
        if fig is not None:
            written.append(save_figure(fig, out_dir / f"curve_{m.key}.png"))
    return written


def heatmap_figure(grid: Grid, records: list[dict[str, Any]], metric: Metric) -> Any:
    """The figure of ``heatmap_<metric>.png`` (rows × columns, mean over the other axes, annotated), or
    ``None`` when no cell has the metric. Cells without a value are grey: "–" (missing), "n/a" (a detection
    rate of an aggregator that never leaves a client out) or "∞" (an infinite mean: PSNR "∞ (exact)")."""
    plt = pyplot()
    rows, cols, _ = _plotted(grid, records)
    mat, _ = _mean_std(records, rows, cols, metric.key)
    na = _not_applicable(records, rows, cols, metric.key)
    mat[na] = np.nan  # a rate of an aggregator that leaves no client out is no measurement
    if np.isnan(mat).all():
        return None
    fs = 11.0
    longest_col = max((len(c) for c in cols), default=1)
    longest_row = max((len(r) for r in rows), default=1)
    width = max(4.8, 1.9 + 0.08 * longest_row + 1.3 * len(cols))
    title = wrap(f"{grid.name}: {metric.header} ({_better(metric)} is better)", width - 0.3, fs)
    height = 1.5 + 0.06 * min(longest_col, 30) + 0.55 * len(rows) + text_height(title, fs)
    fig, ax = plt.subplots(figsize=(width, height), dpi=100, layout="constrained")
    cmap = plt.get_cmap("viridis" if metric.better == "max" else "viridis_r").with_extremes(bad="#e0e0e0")
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(grid.columns)
    ax.set_ylabel(grid.rows)
    fig.suptitle(title, fontsize=fs)  # centred on the figure: long row labels do not narrow it
    finite = mat[np.isfinite(mat)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = mat[i, j]
            if np.isnan(v):
                txt = NOT_APPLICABLE if na[i, j] else MISSING
            elif np.isinf(v):
                txt = format_value(float(v), metric.key)
            else:
                txt = f"{v:.3f}"
            dark = bool(np.isfinite(v)) and ((v < mid) == (metric.better == "max"))
            ax.text(
                j, i, txt, ha="center", va="center", color="white" if dark else "black", fontsize=9
            ).set_in_layout(False)  # inside its cell: the layout need not measure hundreds of them
    fig.colorbar(im, ax=ax)
    fit_text(fig)
    return fig


def write_heatmaps(grid: Grid, records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``heatmap_<metric>.png`` (rows × columns, mean over other axes, annotated) for each metric with
    data."""
    written = []
    for m in _plotted(grid, records)[2]:
        fig = heatmap_figure(grid, records, m)
        if fig is not None:
            written.append(save_figure(fig, out_dir / f"heatmap_{m.key}.png"))
    return written


_JS = r"""
(function () {
  function val(td) {
    var v = td.getAttribute('data-value');
    return v === null ? td.textContent.trim() : v;
  }
  function missing(v) { return v === '' || v === '\u2013' || v === '-' || v === 'n/a'; }
  function isNum(v) { return !missing(v) && v.trim() !== '' && !isNaN(Number(v)); }
  function cmp(x, y) { return x < y ? -1 : (x > y ? 1 : 0); }
  function sortTable(table, col, dir) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var vals = rows.map(function (r, i) { return {row: r, v: val(r.cells[col]), i: i}; });
    var numeric = vals.every(function (x) { return missing(x.v) || isNum(x.v); });
    var sign = dir === 'desc' ? -1 : 1;
    vals.sort(function (a, b) {
      var ma = missing(a.v), mb = missing(b.v);
      if (ma || mb) { return ma === mb ? a.i - b.i : (ma ? 1 : -1); }
      var c = numeric ? cmp(Number(a.v), Number(b.v)) : a.v.localeCompare(b.v);
      return c !== 0 ? sign * c : a.i - b.i;
    });
    vals.forEach(function (x) { body.appendChild(x.row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.removeAttribute('aria-sort');
    });
    table.tHead.rows[0].cells[col].setAttribute('aria-sort', dir === 'desc' ? 'descending' : 'ascending');
    table.setAttribute('data-sorted', table.tHead.rows[0].cells[col].getAttribute('data-key') + ':' + dir);
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener('click', function () {
        var dir = th.getAttribute('data-dir') === 'asc' ? 'desc' : 'asc';
        Array.prototype.forEach.call(table.tHead.rows[0].cells, function (o) {
          o.removeAttribute('data-dir');
        });
        th.setAttribute('data-dir', dir);
        sortTable(table, col, dir);
      });
    });
  });
  var q = new URLSearchParams(window.location.search);
  var key = q.get('sort');
  if (key) {
    var table = document.getElementById(q.get('table') || 'cells');
    var th = table && table.querySelector('th[data-key="' + key + '"]');
    if (th) {
      th.click();
      if (q.get('dir') === 'desc') { th.click(); }
    }
  }
})();
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
td.label, th.label { text-align: left; }
td:not(.label) { white-space: nowrap; }
td.best { font-weight: bold; background: #e8f5e9; }
tr.failed td { color: #a00; }
img.heatmap { max-width: 48%; margin: 0.5em; border: 1px solid #ddd; }
"""


def _td(v: Any, cls: str = "", key: str = "") -> str:
    """A table cell; numbers carry their value in ``data-value`` for sorting (±∞ as ``Infinity`` /
    ``-Infinity``, which the page sorts beyond every finite value); missing and n/a cells sort last."""
    c = f' class="{cls}"' if cls else ""
    if isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool)):
        x = float(v)
        data = ("Infinity" if x > 0 else "-Infinity") if math.isinf(x) else repr(v)
        return f'<td{c} data-value="{data}">{html.escape(format_value(x, key))}</td>'
    if v is None or v == NOT_APPLICABLE:
        return f'<td{c} data-value="">{MISSING if v is None else NOT_APPLICABLE}</td>'
    return f"<td{c}>{html.escape(str(v))}</td>"


def _th(header: str, key: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<th{c} data-key="{html.escape(key)}" title="click to sort">{html.escape(header)}</th>'


def _cell_links(r: dict[str, Any], out_dir: Path) -> str:
    if not r.get("out_dir"):
        return MISSING
    d = Path(r["out_dir"])
    links = []
    if d.is_dir():
        pngs = sorted(d.glob("*.png"), key=lambda p: (p.name != "accuracy.png", p.name))
        for p in pngs:
            rel = os.path.relpath(p, out_dir)
            links.append(f'<a href="{html.escape(rel)}">{html.escape(p.stem)}</a>')
        if (d / "summary.json").exists():
            links.append(f'<a href="{html.escape(os.path.relpath(d / "summary.json", out_dir))}">summary</a>')
    return " ".join(links) if links else MISSING


def render_html(
    grid: Grid, table: Table, records: list[dict[str, Any]], out_dir: Path, heatmaps: Sequence[Path] = ()
) -> str:
    """``leaderboard.html``: self-contained page with sortable tables (ids ``leaderboard`` and ``cells``)."""
    best = table.best()
    h = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>privsim leaderboard: {html.escape(grid.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Leaderboard: {html.escape(grid.name)}</h1>",
    ]
    if grid.description:
        h.append(f"<p>{html.escape(grid.description)}</p>")
    h.append(f"<h2>{html.escape(table.title)}</h2>")
    h.append(
        '<table id="leaderboard" class="sortable"><thead><tr>'
        + _th(table.label_header, "label", "label")
        + "".join(_th(hd, k) for hd, k in zip(table.headers, table.keys))
        + "</tr></thead><tbody>"
    )
    for label, vals in table.rows:
        tds = [_td(label, "label")]
        for j, v in enumerate(vals):
            tds.append(_td(v, "best" if _is_best(v, best[j]) else "", table.keys[j]))
        h.append(f'<tr data-row="{html.escape(label)}">' + "".join(tds) + "</tr>")
    h.append("</tbody></table>")
    others = [a for a in grid.axes if a not in (grid.rows, grid.columns)]
    if others:
        h.append(f"<p>Values are means over {html.escape(', '.join(others))}. Click a header to sort.</p>")
    h += [f"<p>{html.escape(note)}</p>" for note in value_notes(table)]
    if grid.track == "integrity":
        h += [f"<p>{html.escape(note)}</p>" for note in integrity_notes(grid, records)]
    if heatmaps:
        h.append("<h2>Plots</h2><div>")
        for p in heatmaps:
            data = base64.b64encode(Path(p).read_bytes()).decode()
            h.append(
                f'<img class="heatmap" alt="{html.escape(Path(p).stem)}" src="data:image/png;base64,{data}">'
            )
        h.append("</div>")
    metrics = INTEGRITY_METRICS if grid.track == "integrity" else _with_data(PRIVACY_METRICS, records)
    axes = list(grid.axes)
    h.append("<h2>Cells</h2>")
    h.append(
        '<table id="cells" class="sortable"><thead><tr>'
        + "".join(_th(a, a, "label") for a in axes)
        + _th("status", "status", "label")
        + "".join(_th(m.header, m.key) for m in metrics)
        + _th("time (s)", "wall_time_s")
        + _th("digest", "digest", "label")
        + _th("plots", "plots", "label")
        + "</tr></thead><tbody>"
    )
    for r in records:
        status = status_text(r["status"]) + (f": {r['reason']}" if r.get("reason") else "")
        tds = (
            [_td(r.get(a, ""), "label") for a in axes]
            + [_td(status, "label")]
            + [_td(_cell_value(r, m.key), "", m.key) for m in metrics]
            + [
                _td(r["wall_time_s"]),
                _td(r["digest"], "label"),
                f'<td class="label">{_cell_links(r, out_dir)}</td>',
            ]
        )
        cls = ' class="failed"' if r["status"] == "failed" else ""
        h.append(f'<tr data-cell="{html.escape(r["label_path"])}"{cls}>' + "".join(tds) + "</tr>")
    h.append("</tbody></table>")
    h.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(h) + "\n"


def write_reports(grid_run: Any) -> dict[str, Path]:
    """Write md / csv / heatmaps / html for a :class:`~simulator.leaderboard.runner.GridRun` into its
    out_dir."""
    grid, out = grid_run.grid, Path(grid_run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = cell_records(grid, grid_run.cells)
    table = leaderboard_table(grid, records)
    paths = {"md": out / "leaderboard.md", "csv": out / "leaderboard.csv", "html": out / "leaderboard.html"}
    paths["md"].write_text(render_markdown(grid, table, records))
    write_csv(grid, records, paths["csv"])
    heatmaps = write_heatmaps(grid, records, out) + write_curves(grid, records, out)
    paths["html"].write_text(render_html(grid, table, records, out, heatmaps))
    for p in heatmaps:
        paths[p.stem] = p
    return paths


@dataclass
class CellOutcome:
    """One cell's state as the report reads it: ``status`` (``completed``, ``skipped``, ``failed`` or ``not
    run``), its summary when finished, the reason when failed."""

    cell: Any
    status: str
    summary: dict[str, Any] | None = None
    reason: str | None = None


def outcomes_from_store(grid: Grid, store: str | Path) -> list[Any]:
    """Each cell's state in the store: ``skipped`` (finished; summary attached; shown as "done (stored)"),
    ``failed`` or ``not run``."""
    p = Path(store)
    if not p.exists():
        return [CellOutcome(c, "not run") for c in grid.cells]
    rs = ResultsStore(p)
    latest: dict[str, dict[str, Any]] = {}
    for r in rs.runs():
        latest[r["digest"]] = r
    out = []
    for c in grid.cells:
        done = rs.finished(c.digest)
        if done is not None:
            out.append(CellOutcome(c, "skipped", done))
        elif c.digest in latest and str(latest[c.digest]["status"]).startswith("failed"):
            out.append(CellOutcome(c, "failed", None, str(latest[c.digest]["status"])[len("failed: ") :]))
        else:
            out.append(CellOutcome(c, "not run"))
    return out


def print_tables(grid: Grid, outcomes: list[Any], console: Any = None) -> None:
    """Print the leaderboard table and the per-cell table in the terminal with rich."""
    console = console or Console()
    records = cell_records(grid, outcomes)
    table = leaderboard_table(grid, records)
    best = table.best()
    rt = RichTable(title=f"{grid.name}: {table.title}")
    rt.add_column(table.label_header, style="bold")
    for hd in table.headers:
        rt.add_column(hd, justify="right")
    for label, vals in table.rows:
        rt.add_row(
            label,
            *[
                f"[bold green]{c}[/]" if _is_best(v, b) else c
                for c, v, b in zip([format_value(v, k) for v, k in zip(vals, table.keys)], vals, best)
            ],
        )
    console.print(rt)
    for note in value_notes(table):
        console.print(note, markup=False)
    metrics = INTEGRITY_METRICS if grid.track == "integrity" else _with_data(PRIVACY_METRICS, records)
    ct = RichTable(title="cells")
    for a in grid.axes:
        ct.add_column(a)
    ct.add_column("status")
    for m in metrics:
        ct.add_column(m.header, justify="right")
    for r in records:
        status = status_text(r["status"])
        if r["status"] == "failed":
            status = f"[red]failed[/]: {r['reason']}"
        ct.add_row(
            *[str(r.get(a, "")) for a in grid.axes],
            status,
            *[format_value(_cell_value(r, m.key), m.key) for m in metrics],
        )
    console.print(ct)
