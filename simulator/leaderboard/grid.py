"""Leaderboard grid files: a base scenario plus named axes; every combination of axis entries is a cell.

Grid file format (TOML)
-----------------------
::

    name = "leaderboard_smoke"            # required; names the grid, its cells and its output folder
    description = "..."                   # optional
    track = "integrity"                   # "integrity" (MA / BA / MA drop / TPR / FPR / ranking score)
                                          # or "privacy" (MA / PSNR / SSIM / label accuracy / epsilon)
    base = "quickstart.toml"              # the base scenario, a path relative to the grid file
    overrides = ["federation.rounds=2"]   # optional; ``key.path=value`` overrides applied to every cell
    rows = "defense"                      # optional; the axis whose labels are the table rows
                                          # (default "defense")
    columns = "attack"                    # optional; the axis whose labels are the table columns
                                          # (default "attack")
    baseline = "fedavg"                   # optional; the row label the ranking score compares against

    [axes]                                # at least one axis; each is a non-empty list of entries
    attack = [ {label = "none"},
               {label = "badnets", set = ["attacks.backdoor.name='badnets'", "attacks.plan.malicious=2"]} ]
    defense = [ {label = "fedavg", set = ["defenses.aggregator.name='fedavg'"]},
                {label = "median", set = ["defenses.aggregator.name='median'"]} ]
    seed = [0, 1]                         # bare values are allowed on the axis named "seed" only
                                          # (sets ``seed``)

An entry is a table with a ``label`` (unique within its axis; letters, digits, ``._+-`` are kept in folder
names) and an optional ``set`` list of overrides in the ``--set`` syntax (values are TOML, bare words are
strings). Overrides apply in order: base file, then ``overrides``, then the axes in the order they are written
(so a later axis wins on a key two axes both set).

Each cell is one fully resolved :class:`~simulator.scenario.Scenario` named ``<grid name>.<label path>``
(the label path joins the cell's labels with ``-`` in axis order) and keyed by its ``digest()``. Expansion
validates every cell: all problems of all cells are collected and reported at once as a :class:`GridError`,
each naming the axis, the entry and the field (``axis 'defense' entry 'medain': defenses.aggregator.name:
unknown aggregator ...``). Two cells that resolve to the same scenario are an error too.

Axes that are neither ``rows`` nor ``columns`` (seeds, Dirichlet alphas ...) are averaged over in the tables;
the CSV keeps one row per cell.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from simulator.scenario import Problem, Scenario, ScenarioError, apply_overrides, scenario_from_dict

__all__ = ["AxisEntry", "Cell", "Grid", "GridError", "expand", "grid_from_dict", "load_grid"]

_TOP_KEYS = {"name", "description", "track", "base", "overrides", "axes", "rows", "columns", "baseline"}
_ENTRY_KEYS = {"label", "set"}


class GridError(ValueError):
    """A grid file that cannot be expanded; the message lists every problem, one per line."""

    def __init__(self, source: str | None, problems: list[str]) -> None:
        self.source, self.problems = source, problems
        where = source or "grid"
        lines = [f"{where}: {len(problems)} problem{'s' if len(problems) != 1 else ''}:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class AxisEntry:
    """One value of an axis: a label and the overrides it applies."""

    label: str
    set: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cell:
    """One combination of axis entries, resolved to a validated scenario.

    Attributes
    ----------
    labels
        Axis name -> entry label, in axis order.
    scenario
        The validated scenario of this cell.
    data
        The raw scenario dict the scenario was validated from (what worker processes rebuild it from).
    """

    labels: dict[str, str]
    scenario: Scenario
    data: dict[str, Any]

    @property
    def digest(self) -> str:
        """The scenario digest (the key of the cell in the results store)."""
        return self.scenario.digest()

    @property
    def label_path(self) -> str:
        """The labels joined with ``-``, safe for a folder name."""
        return "-".join(_safe(v) for v in self.labels.values())

    @property
    def dirname(self) -> str:
        """``<label-path>-<digest[:8]>``: the cell's folder under ``<out_dir>/cells/``."""
        return f"{self.label_path}-{self.digest[:8]}"


@dataclass
class Grid:
    """A parsed grid file (see the module docstring for the format)."""

    name: str
    track: Literal["integrity", "privacy"]
    base: Path
    base_data: dict[str, Any]
    overrides: list[str]
    axes: dict[str, list[AxisEntry]]
    description: str = ""
    rows: str = "defense"
    columns: str = "attack"
    baseline: str = "fedavg"
    source: str | None = None
    cells: list[Cell] = field(default_factory=list)


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+]+", "_", label).strip("_") or "x"


def _problem_text(p: Problem) -> str:
    return str(p)


def _parse_entry(axis: str, i: int, raw: Any, problems: list[str]) -> AxisEntry | None:
    where = f"axis {axis!r} entry #{i + 1}"
    if not isinstance(raw, dict):
        if axis == "seed" and isinstance(raw, int) and not isinstance(raw, bool):
            return AxisEntry(label=str(raw), set=(f"seed={raw}",))
        problems.append(
            f"{where}: expected a table {{label = ..., set = [...]}}, got {raw!r}"
            + ("" if axis != "seed" else " (bare values on the 'seed' axis must be integers)")
        )
        return None
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: label, set")
    label = raw.get("label")
    if not isinstance(label, str) or not label.strip():
        problems.append(f"{where}: 'label' must be a non-empty string")
        return None
    sets = raw.get("set", [])
    if not isinstance(sets, list) or not all(isinstance(x, str) for x in sets):
        problems.append(f"axis {axis!r} entry {label!r}: 'set' must be a list of 'key.path=value' strings")
        return None
    return AxisEntry(label=label, set=tuple(sets))


def grid_from_dict(raw: dict[str, Any], *, source: str | None = None, root: Path | None = None) -> Grid:
    """Parse and expand a grid from a dict (parsed TOML).

    Parameters
    ----------
    raw
        The grid table.
    source
        Where it came from (used in error messages).
    root
        The folder ``base`` is relative to (default: the current directory).

    Returns
    -------
    Grid
        The grid with ``cells`` expanded and validated.

    Raises
    ------
    GridError
        With every problem found (file format, overrides, scenario validation of every cell).
    """
    problems: list[str] = []
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        problems.append(
            f"unknown top-level key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TOP_KEYS))}"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append("'name' must be a non-empty string")
        name = "grid"
    track = raw.get("track", "integrity")
    if track not in ("integrity", "privacy"):
        problems.append(f"track: {track!r} is not one of 'integrity', 'privacy'")
    overrides = raw.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(x, str) for x in overrides):
        problems.append("'overrides' must be a list of 'key.path=value' strings")
        overrides = []
    for key in ("rows", "columns", "baseline", "description"):
        if key in raw and not isinstance(raw[key], str):
            problems.append(f"{key!r} must be a string")
    base_data: dict[str, Any] = {}
    base_path = Path(str(raw.get("base", "")))
    if "base" not in raw or not isinstance(raw["base"], str):
        problems.append("'base' must name the base scenario file (relative to the grid file)")
    else:
        base_path = (root or Path(".")) / raw["base"]
        if not base_path.exists():
            problems.append(f"base: scenario file {str(base_path)!r} not found")
        else:
            try:
                base_data = tomllib.loads(base_path.read_text())
            except tomllib.TOMLDecodeError as e:
                problems.append(f"base: {base_path} is not valid TOML: {e}")
    axes_raw = raw.get("axes")
    axes: dict[str, list[AxisEntry]] = {}
    if not isinstance(axes_raw, dict) or not axes_raw:
        problems.append("[axes] must hold at least one axis (a named list of entries)")
    else:
        for axis, entries in axes_raw.items():
            if not isinstance(entries, list) or not entries:
                problems.append(f"axis {axis!r}: must be a non-empty list of entries")
                continue
            parsed = [_parse_entry(axis, i, e, problems) for i, e in enumerate(entries)]
            good = [e for e in parsed if e is not None]
            seen: set[str] = set()
            for entry in good:
                if entry.label in seen:
                    problems.append(f"axis {axis!r}: label {entry.label!r} appears twice")
                seen.add(entry.label)
            axes[axis] = good
    if problems:
        raise GridError(source, problems)

    grid = Grid(
        name=name,
        track=track,
        base=base_path,
        base_data=base_data,
        overrides=list(overrides),
        axes=axes,
        description=raw.get("description", ""),
        rows=raw.get("rows", "defense"),
        columns=raw.get("columns", "attack"),
        baseline=raw.get("baseline", "fedavg"),
        source=source,
    )
    grid.cells = expand(grid)
    return grid


def _blame(key_path: str, grid: Grid, combo: tuple[tuple[str, AxisEntry], ...]) -> str:
    """Which axis entry (the last one applied) set the field ``key_path``; else the grid overrides / base."""

    def touches(sets: tuple[str, ...] | list[str]) -> bool:
        for item in sets:
            key = item.split("=", 1)[0].strip()
            if key_path == key or key_path.startswith(key + ".") or key.startswith(key_path + "."):
                return True
        return False

    for axis, entry in reversed(combo):
        if touches(entry.set):
            return f"axis {axis!r} entry {entry.label!r}"
    if touches(grid.overrides):
        return "grid overrides"
    return f"base scenario {grid.base.name!r}"


def expand(grid: Grid) -> list[Cell]:
    """Every combination of axis entries as a validated :class:`Cell`, in axis order (last axis fastest).

    Raises
    ------
    GridError
        Listing each distinct problem once, naming the axis, entry and field.
    """
    src = grid.source
    problems: list[str] = []
    try:
        common = apply_overrides(grid.base_data, grid.overrides, source=src)
    except ScenarioError as e:
        raise GridError(src, [f"grid overrides: {p}" for p in e.problems]) from None
    # Malformed override strings: report per entry, once.
    for axis, entries in grid.axes.items():
        for entry in entries:
            try:
                apply_overrides({}, entry.set, source=src)
            except ScenarioError as e:
                problems += [f"axis {axis!r} entry {entry.label!r}: {p}" for p in e.problems]
    if problems:
        raise GridError(src, problems)

    cells: list[Cell] = []
    seen_problems: dict[str, None] = {}
    by_digest: dict[str, Cell] = {}
    names = list(grid.axes)
    for combo_entries in itertools.product(*(grid.axes[a] for a in names)):
        combo = tuple(zip(names, combo_entries))
        data = common
        try:
            for _axis, entry in combo:
                data = apply_overrides(data, entry.set, source=src)
        except ScenarioError as e:  # e.g. "x is a value, not a table" once combined
            who = ", ".join(f"{a}={en.label}" for a, en in combo)
            for p in e.problems:
                seen_problems.setdefault(f"cell ({who}): {p}", None)
            continue
        labels = {a: en.label for a, en in combo}
        label_path = "-".join(_safe(v) for v in labels.values())
        data = {**data, "name": f"{grid.name}.{label_path}"}
        try:
            s = scenario_from_dict(data, source=src)
        except ScenarioError as e:
            for p in e.problems:
                seen_problems.setdefault(f"{_blame(p.path, grid, combo)}: {_problem_text(p)}", None)
            continue
        cell = Cell(labels=labels, scenario=s, data=data)
        same = s.model_copy(update={"name": grid.name}).digest()  # the cell name aside, what does it run?
        if same in by_digest:
            other = by_digest[same]
            seen_problems.setdefault(
                f"cells {other.label_path!r} and {cell.label_path!r} resolve to the same "
                f"scenario; an axis entry sets nothing new",
                None,
            )
            continue
        by_digest[same] = cell
        cells.append(cell)
    if seen_problems:
        raise GridError(src, list(seen_problems))
    return cells


def load_grid(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Grid:
    """Read, parse and expand a grid file.

    Parameters
    ----------
    path
        The grid TOML file.
    overrides
        Extra ``key.path=value`` overrides appended to the file's ``overrides`` (so the axes still win); they
        change every cell's scenario and so its digest.

    Raises
    ------
    GridError
        If the file is missing, not TOML, or any cell is invalid (all problems at once).
    """
    p = Path(path)
    if not p.exists():
        raise GridError(str(p), ["file not found"])
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise GridError(str(p), [f"not valid TOML: {e}"]) from None
    if overrides:
        base = raw.get("overrides", [])
        raw["overrides"] = [*(base if isinstance(base, list) else [base]), *overrides]
    return grid_from_dict(raw, source=str(p), root=p.parent)
