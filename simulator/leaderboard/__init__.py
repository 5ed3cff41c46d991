"""Attack × defense leaderboards: grid files, resumable grid runs, and Markdown / CSV / HTML / heatmap
outputs.

``load_grid(path)`` parses and expands a grid file (format in :mod:`simulator.leaderboard.grid`);
``run_grid(grid, store=..., out_dir=...)`` runs the cells not yet in the results store and writes the
leaderboard (:mod:`simulator.leaderboard.runner`, :mod:`simulator.leaderboard.report`).
"""

from simulator.leaderboard.grid import AxisEntry, Cell, Grid, GridError, expand, grid_from_dict, load_grid
from simulator.leaderboard.report import cell_metrics, ranking_scores, write_reports
from simulator.leaderboard.runner import CellOutcome, GridRun, default_out_dir, default_store, run_grid

__all__ = [
    "AxisEntry",
    "Cell",
    "CellOutcome",
    "Grid",
    "GridError",
    "GridRun",
    "cell_metrics",
    "default_out_dir",
    "default_store",
    "expand",
    "grid_from_dict",
    "load_grid",
    "ranking_scores",
    "run_grid",
    "write_reports",
]
