"""Private-learning baselines of the seed papers on mnist5k: main accuracy vs record-level ε.

Runs ``scenarios/private_learning_grid.toml`` (cells already finished in the store are reused) and writes

* ``private_learning.md`` / ``private_learning.csv``: method, ε target, ε reported (the run's privacy ledger,
  dp-accounting events of what ran, worst client), noise multiplier(s), final main accuracy;
* ``private_learning.png``: main accuracy vs reported ε, one curve per method, the no-DP accuracy as a line;

into ``--tables`` (default ``benchmarks/out``); the grid's leaderboard (cells, leaderboard.md, store) goes to
``--out`` (default ``runs/private_learning``).

The three methods (all record level, ε for one example of one client, δ = 1e-5):

* DP-SGD, gradient perturbation (Abadi et al., CCS 2016): Opacus in every client; ``target_epsilon`` with
  ``on_budget = "calibrate"`` (the simulator's own calibration of z for the planned rounds and local steps).
* Input perturbation (the input-vs-gradient comparison of Arcolezi et al., 2022): one Gaussian release of
  every clipped feature vector, then plain training; calibrated by the simulator too. Labels are not
  protected.
* DPSGD-F (Sun, Suresh & Menon, ICLR 2024: private centring and scaling, then DP-SGD): the simulator refuses
  to calibrate it (its calibration leaves out the two preprocessing releases), so the grid file carries fixed
  noise multipliers computed here (``--calibrate``): the two preprocessing Gaussians take ``--pre-share`` of
  the target (ε of those two releases alone), and DP-SGD's z is the smallest one whose *total* ε, composed by
  the simulator's own privacy ledger (dp-accounting PLD) from the same events the run records, is ≤ the
  target.
  Both multipliers are rounded up.

The ε in the table is always the run's ledger value (what ran), never the target.

    python benchmarks/private_learning_table.py --calibrate   # print DPSGD-F's multipliers for the grid file
    python benchmarks/private_learning_table.py               # run (or reuse) the grid; table + PNG
    python benchmarks/private_learning_table.py --no-run      # only the cells already in the store
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path
from typing import Any

from dp_accounting import dp_event as E

from simulator.dp.ledger import PrivacyLedger
from simulator.leaderboard import load_grid, run_grid
from simulator.results import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "scenarios" / "private_learning_grid.toml"
OUT = ROOT / "runs" / "private_learning"
TABLES = ROOT / "benchmarks" / "out"
TARGETS = (1.0, 2.0, 4.0, 8.0)
METHODS = {"dpsgd": "DP-SGD (gradient)", "input": "input perturbation", "dpsgd_f": "DPSGD-F", "none": "no DP"}
LABEL = re.compile(r"^(?P<method>[a-z_]+?)(?:_(?P<model>cnn))?(?:_eps(?P<eps>[0-9.]+))?$")


# ---- DPSGD-F calibration (the simulator's ledger, the events a run records) ----
def dpsgdf_epsilon(zp: float, z: float, *, q: float, steps: int, rounds: int, delta: float) -> float:
    """Record-level ε of one client that takes part in every round: the two preprocessing Gaussians
    ``(z_p, q = 1)`` once, then ``steps`` Poisson-sampled Gaussian steps ``(z, q)`` per round (the rows the
    mechanism reports and the ledger composes)."""
    ledger = PrivacyLedger(delta=delta)
    ledger.add_view("records", "one record", relation="add_or_remove_one", per_subject=True)
    for _ in range(2):
        ledger.record("records", E.GaussianDpEvent(zp), round=1, subject=0, what="preprocessing")
    step = E.SelfComposedDpEvent(E.PoissonSampledDpEvent(q, E.GaussianDpEvent(z)), steps)
    for r in range(rounds):
        ledger.record("records", step, round=r + 1, subject=0, what="DP-SGD")
    return ledger.epsilon("records")


def _smallest_z(eps_of: Any, target: float, lo: float = 0.05, hi: float = 500.0) -> float:
    """The smallest z (to 1e-4 relative) with eps_of(z) ≤ target; eps_of is decreasing."""
    if eps_of(hi) > target:
        raise ValueError(f"target ε = {target} not reachable with z ≤ {hi}")
    while hi / lo > 1 + 1e-4:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if eps_of(mid) > target else (lo, mid)
    return hi


def _round_up(z: float, digits: int = 4) -> float:
    scale = 10 ** (digits - 1 - math.floor(math.log10(z)))
    return math.ceil(z * scale) / scale


def calibrate_dpsgdf(
    target: float, *, q: float, steps: int, rounds: int, delta: float, pre_share: float
) -> tuple[float, float, float]:
    """``(z_p, z, ε)``: preprocessing and DP-SGD multipliers for ``target`` and the ε they give."""
    zp = _round_up(
        _smallest_z(
            lambda v: dpsgdf_epsilon(v, math.inf, q=q, steps=steps, rounds=0, delta=delta), pre_share * target
        )
    )
    z = _round_up(
        _smallest_z(lambda v: dpsgdf_epsilon(zp, v, q=q, steps=steps, rounds=rounds, delta=delta), target)
    )
    eps = dpsgdf_epsilon(zp, z, q=q, steps=steps, rounds=rounds, delta=delta)
    assert eps <= target
    return zp, z, eps


# ---- the table ----
def _row(label: str, summary: dict[str, Any] | None) -> dict[str, Any]:
    m = LABEL.match(label)
    method, model, eps = (m["method"], m["model"], m["eps"]) if m else (label, None, None)
    priv = (summary or {}).get("privacy") or {}
    final = (summary or {}).get("final") or {}
    scen = (summary or {}).get("scenario") or {}
    name = METHODS.get(method, method) + (f" ({model.upper()})" if model else "")
    if not model:
        name += f" ({(scen.get('model') or {}).get('name', '?').upper()})"
    zp = priv.get("preprocessing_noise_multiplier")
    return {
        "label": label,
        "method": name,
        "epsilon_target": float(eps) if eps else None,
        "epsilon_reported": priv.get("epsilon"),
        "epsilon_opacus": priv.get("epsilon_opacus"),  # DP-SGD cells: Opacus's own accountant, beside it
        "noise_multiplier": priv.get("noise_multiplier"),
        "preprocessing_noise_multiplier": zp,
        "main_accuracy": final.get("main_accuracy"),
        "seconds": (summary or {}).get("wall_time_s"),
    }


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def write_table(rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0])
    csv_p, md_p = out / "private_learning.csv", out / "private_learning.md"
    with csv_p.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    head = ["method", "ε target", "ε reported", "ε Opacus", "z", "z_p (DPSGD-F)", "main accuracy", "seconds"]
    keys = [
        "method",
        "epsilon_target",
        "epsilon_reported",
        "epsilon_opacus",
        "noise_multiplier",
        "preprocessing_noise_multiplier",
        "main_accuracy",
        "seconds",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [_fmt(r[k], 4 if k == "main_accuracy" else 3) for k in keys]
        for i, k in ((2, "epsilon_reported"), (3, "epsilon_opacus")):  # 4 decimals: never shown as the target
            if r[k] is not None:
                vals[i] = f"{float(r[k]):.4f}"
        lines.append("| " + " | ".join(vals) + " |")
    note = (
        "ε reported = the run's privacy ledger (dp-accounting PLD, worst client); ε Opacus = the worst "
        "client's ε from Opacus's own accountant (PRV) for the same steps (take the larger when in "
        "doubt); z = DP-SGD's noise multiplier, or the input noise std / sensitivity for input perturbation."
    )
    md_p.write_text(
        "# Private learning on mnist5k: main accuracy vs record-level ε (δ = 1e-5)\n\n"
        + note
        + "\n\n"
        + "\n".join(lines)
        + "\n"
    )
    return md_p, csv_p


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    # deferred: matplotlib only for the figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["epsilon_target"] is None or r["main_accuracy"] is None or r["epsilon_reported"] is None:
            continue
        groups.setdefault(r["method"], []).append((float(r["epsilon_reported"]), float(r["main_accuracy"])))
    for name, pts in groups.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    for r in rows:
        if r["epsilon_target"] is None and r["main_accuracy"] is not None:
            ax.axhline(float(r["main_accuracy"]), ls="--", color="grey", label=f"{r['method']}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(TARGETS), [f"{t:g}" for t in TARGETS])
    ax.set_xlabel("record-level ε reported by the ledger (δ = 1e-5)")
    ax.set_ylabel("final main accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Private learning on mnist5k: accuracy vs ε")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right", bbox_to_anchor=(1.0, 0.3))  # between the curves' usual bands
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=Path, default=GRID)
    ap.add_argument("--out", type=Path, default=OUT, help="the grid's leaderboard folder (cells, store)")
    ap.add_argument("--tables", type=Path, default=TABLES, help="folder of the table and the PNG")
    ap.add_argument("--store", type=Path, default=None, help="results store (default: <out>/store.sqlite)")
    ap.add_argument("--no-run", action="store_true", help="read finished cells from the store only")
    ap.add_argument(
        "--set", action="append", default=[], help="override a field of every cell (as privsim's --set)"
    )
    ap.add_argument("--calibrate", action="store_true", help="print DPSGD-F's multipliers for the grid")
    ap.add_argument("--q", type=float, default=1 / 7, help="DP-SGD sampling rate of a client (1/batches)")
    ap.add_argument("--steps", type=int, default=14, help="DP-SGD steps per round (epochs × batches)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--pre-share", type=float, default=0.25, help="share of ε for DPSGD-F's preprocessing")
    args = ap.parse_args()

    if args.calibrate:
        print("| ε target | z_p | z | ε (ledger) |\n|---|---|---|---|")
        for t in TARGETS:
            zp, z, eps = calibrate_dpsgdf(
                t, q=args.q, steps=args.steps, rounds=args.rounds, delta=args.delta, pre_share=args.pre_share
            )
            print(f"| {t:g} | {zp:g} | {z:g} | {eps:.4f} |")
        return

    grid = load_grid(args.grid, args.set)
    store = args.store or args.out / "store.sqlite"
    summaries: dict[str, dict[str, Any] | None] = {}
    if args.no_run:
        rs = ResultsStore(store)
        for cell in grid.cells:
            summaries[cell.label_path] = rs.finished(cell.digest)
    else:
        run = run_grid(grid, store=store, out_dir=args.out)
        for o in run.cells:
            summaries[o.cell.label_path] = o.summary
    rows = [_row(label, s) for label, s in summaries.items()]
    md_p, csv_p = write_table(rows, args.tables)
    png = plot(rows, args.tables / "private_learning.png")
    print(md_p.read_text())
    print(f"wrote {md_p}, {csv_p}, {png}")


if __name__ == "__main__":
    main()
