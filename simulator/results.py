"""Round records, run results, the output folder and the SQLite results store.

The store keeps every run (one row in ``runs``) and every round (rows in ``rounds``) as they
finish, so an interrupted run or leaderboard loses nothing that was done. ``summary.json`` keys
are documented in the README.
"""

from __future__ import annotations

import csv
import importlib.metadata as md
import json
import math
import platform
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "InversionRound",
    "ResultsStore",
    "RoundRecord",
    "RunResult",
    "default_out_dir",
    "jsonable",
    "versions",
    "write_outputs",
]


def default_out_dir(s: Any) -> Path:
    """``<output.dir>/<name>-<time>-<digest>``: a new run folder for scenario ``s``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(s.output.dir) / f"{s.name}-{stamp}-{s.digest()[:6]}"


def jsonable(x: Any) -> Any:
    """Plain JSON types, so the file stays valid JSON: NaN becomes None (no value); ±Inf becomes the string
    "inf" / "-inf" (an ε = ∞ or an exact reconstruction's PSNR is a value, not a missing one; Python's
    ``float("inf")`` reads it back)."""
    if isinstance(x, float):
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return None if math.isnan(x) else x
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        return jsonable(x.item())
    return x


@dataclass
class InversionRound:
    """The in-run inversion attack's results in one round (step 9): per attacked client and their means."""

    per_client: dict[int, dict[str, float | None]] = field(
        default_factory=dict
    )  # psnr, ssim, mse, label_acc ...
    psnr: float | None = None
    ssim: float | None = None
    label_accuracy: float | None = None


@dataclass
class RoundRecord:
    """What happened in one round (one row of rounds.csv, one entry of summary.json's ``rounds``).

    Every field is typed; :meth:`flat` gives summary.json's flat row (``skipped`` is written as
    ``round_skipped``, the privacy report's numbers and the inversion means as their own columns)."""

    round: int
    main_accuracy: float | None = None
    main_loss: float | None = None
    train_loss: float | None = None
    clients_sampled: int = 0
    clients_replied: int = 0
    clients_aggregated: int = 0
    sampled: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)  # sampled but never answered (federation.dropout)
    late: list[int] = field(default_factory=list)  # answered after federation.deadline_s (simulated time)
    failed: list[dict[str, Any]] = field(default_factory=list)  # the ClientApp raised
    rejected: list[dict[str, Any]] = field(default_factory=list)  # malformed / non-finite replies
    accepted: list[int] = field(default_factory=list)  # entered the aggregate
    malicious: list[int] = field(default_factory=list)  # acting attackers in the cohort (ground truth)
    seconds: float = 0.0  # wall time
    # [federation.latency]: the round's duration in simulated time (see simulator.round.deadline)
    simulated_seconds: float | None = None
    bytes_up: int = 0  # payload bytes of the valid replies
    bytes_down: int = 0  # the global model, once per live sampled client
    dense_bytes_up: int = 0  # what the valid replies would weigh as dense float32 updates, 4·d each
    dense_bytes_down: int = 0  # 4·d per live sampled client
    backdoor_accuracy: float | None = None  # on the attack's backdoor test set (with a backdoor attack)
    defense_tpr: float | None = None  # detection rates against the evaluator's ground truth
    defense_fpr: float | None = None
    scores: dict[int, float] = field(default_factory=dict)  # the aggregator's per-client scores
    skipped: str | None = None  # why the global model was left unchanged this round
    audit_canaries: int = 0  # [audit] level = "client": canary clients in this round's aggregate
    privacy: dict[str, float] = field(
        default_factory=dict
    )  # the mechanism's round report (ε, δ, clip norm ...)
    inversion: InversionRound | None = None
    poisoned: list[int] = field(default_factory=list)  # [attacks.poisoning]: rows replaced by crafted updates
    poisoning_skipped: str | None = None  # why the acting attackers stayed honest this round
    adapted: list[int] = field(default_factory=list)  # a defense-aware backdoor: rows the adaptation replaced
    adapt_mix: float | None = None  # the share of the backdoor update kept in them

    @property
    def compression_ratio_up(self) -> float | None:
        """Dense bytes ÷ bytes sent, client → server (> 1: compression); None without a valid reply."""
        return self.dense_bytes_up / self.bytes_up if self.bytes_up and self.dense_bytes_up else None

    @property
    def compression_ratio_down(self) -> float | None:
        """Dense bytes ÷ bytes sent, server → clients; None when nothing was sent."""
        return self.dense_bytes_down / self.bytes_down if self.bytes_down and self.dense_bytes_down else None

    def flat(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in _PLAIN_FIELDS}
        d["compression_ratio_up"] = self.compression_ratio_up
        d["compression_ratio_down"] = self.compression_ratio_down
        if self.simulated_seconds is not None:
            d["simulated_seconds"], d["late"] = self.simulated_seconds, self.late
        for k in ("backdoor_accuracy", "defense_tpr", "defense_fpr"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.scores:
            d["scores"] = {str(k): v for k, v in self.scores.items()}
        if self.skipped is not None:
            d["round_skipped"] = self.skipped
        if self.audit_canaries:
            d["audit_canaries"] = self.audit_canaries
        if self.poisoned:
            d["poisoned"] = self.poisoned
        if self.poisoning_skipped is not None:
            d["poisoning_skipped"] = self.poisoning_skipped
        if self.adapted:
            d["adapted"], d["adapt_mix"] = self.adapted, self.adapt_mix
        d.update(self.privacy)
        if self.inversion is not None:
            d["inversion"] = {str(k): v for k, v in self.inversion.per_client.items()}
            d.update(
                inversion_psnr=self.inversion.psnr,
                inversion_ssim=self.inversion.ssim,
                inversion_label_accuracy=self.inversion.label_accuracy,
            )
        return d

    CSV_FIELDS = (
        "round",
        "main_accuracy",
        "main_loss",
        "train_loss",
        "clients_sampled",
        "clients_replied",
        "clients_aggregated",
        "seconds",
        "bytes_up",
        "bytes_down",
        "compression_ratio_up",
        "compression_ratio_down",
    )
    #: rounds.csv's columns when the scenario models latency ([federation.latency]), after ``dropped``
    LATENCY_CSV_FIELDS = ("late", "simulated_seconds")


_PLAIN_FIELDS = (
    "round",
    "main_accuracy",
    "main_loss",
    "train_loss",
    "clients_sampled",
    "clients_replied",
    "clients_aggregated",
    "sampled",
    "dropped",
    "failed",
    "rejected",
    "accepted",
    "malicious",
    "seconds",
    "bytes_up",
    "bytes_down",
)


@dataclass
class RunResult:
    """The content of summary.json, as returned by :func:`simulator.run`. The optional blocks are written
    under their own names when present (a federated run: warm_start, privacy, audit, defense, inversion,
    attack; a leakage experiment: inversion, client, payload, images)."""

    name: str
    scenario: dict[str, Any]
    scenario_digest: str
    seed: int
    engine: str
    versions: dict[str, str]
    rounds: list[RoundRecord]
    wall_time_s: float
    status: str  # "completed" | "stopped: <reason>"
    out_dir: str | None = None
    kind: str = "federated"
    warm_start: dict[str, Any] | None = None
    privacy: dict[str, Any] | None = None  # the mechanism's summary with its ledger
    audit: dict[str, Any] | None = None
    defense: dict[str, Any] | None = None
    inversion: dict[str, Any] | None = None
    attack: dict[str, Any] | None = None
    client: dict[str, Any] | None = None  # leakage: what the victim did (refused, label smoothing ...)
    payload: dict[str, Any] | None = None  # leakage: the payload the server received
    images: list[int] | None = None  # leakage: the victim's dataset indices

    BLOCKS = (
        "warm_start",
        "privacy",
        "audit",
        "defense",
        "inversion",
        "attack",
        "client",
        "payload",
        "images",
    )

    @property
    def final(self) -> dict[str, Any]:
        evaluated = [r for r in self.rounds if r.main_accuracy is not None]
        last = evaluated[-1] if evaluated else None
        out: dict[str, Any] = {
            "round": last.round if last else None,
            "main_accuracy": last.main_accuracy if last else None,
            "main_loss": last.main_loss if last else None,
        }
        if last is not None and last.backdoor_accuracy is not None:
            out["backdoor_accuracy"] = last.backdoor_accuracy
        return out

    @property
    def best(self) -> dict[str, Any]:
        evaluated = [r for r in self.rounds if r.main_accuracy is not None]
        if not evaluated:
            return {"round": None, "main_accuracy": None}
        b = max(evaluated, key=lambda r: (r.main_accuracy, -r.round))
        return {"round": b.round, "main_accuracy": b.main_accuracy}

    def communication(self) -> dict[str, Any]:
        up = sum(r.bytes_up for r in self.rounds)
        down = sum(r.bytes_down for r in self.rounds)
        n = max(len(self.rounds), 1)
        dense_up = sum(r.dense_bytes_up for r in self.rounds)
        dense_down = sum(r.dense_bytes_down for r in self.rounds)
        out = {
            "bytes_up": up,
            "bytes_down": down,
            "bytes_up_per_round": up / n,
            "bytes_down_per_round": down / n,
            "dense_bytes_up": dense_up,
            "dense_bytes_down": dense_down,
            # dense float32 bytes ÷ bytes sent over the run (> 1: compression); None when nothing was sent
            "compression_ratio": {
                "up": dense_up / up if up and dense_up else None,
                "down": dense_down / down if down and dense_down else None,
            },
        }
        return out

    def latency(self) -> dict[str, Any] | None:
        """Simulated time beside wall time, and the late clients ([federation.latency]); None without it."""
        timed = [r for r in self.rounds if r.simulated_seconds is not None]
        if not timed:
            return None
        fed = self.scenario.get("federation") or {}
        n = len(timed)
        sim = sum(r.simulated_seconds or 0.0 for r in timed)
        return {
            "deadline_s": fed.get("deadline_s"),
            "simulated_time_s": sim,
            "simulated_seconds_per_round": sim / n,
            "wall_seconds_per_round": sum(r.seconds for r in timed) / n,
            "late": sum(len(r.late) for r in timed),
            "late_per_round": sum(len(r.late) for r in timed) / n,
            "on_time_per_round": sum(r.clients_replied - len(r.late) for r in timed) / n,
            "aggregated_per_round": sum(r.clients_aggregated for r in timed) / n,
        }

    def to_dict(self) -> dict[str, Any]:
        latency = self.latency()
        return jsonable(
            {
                "name": self.name,
                "status": self.status,
                "seed": self.seed,
                "engine": self.engine,
                "scenario_digest": self.scenario_digest,
                "versions": self.versions,
                "wall_time_s": self.wall_time_s,
                **({"simulated_time_s": latency["simulated_time_s"]} if latency else {}),
                "final": self.final,
                "best": self.best,
                "communication": self.communication(),
                "replies": {
                    "dropped": sum(len(r.dropped) for r in self.rounds),
                    "failed": sum(len(r.failed) for r in self.rounds),
                    "rejected": sum(len(r.rejected) for r in self.rounds),
                    **({"late": latency["late"]} if latency else {}),
                },
                **({"latency": latency} if latency else {}),
                **({"kind": self.kind} if self.kind != "federated" else {}),
                **{k: getattr(self, k) for k in self.BLOCKS if getattr(self, k) is not None},
                "rounds": [r.flat() for r in self.rounds],
                "scenario": self.scenario,
                "out_dir": self.out_dir,
            }
        )


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("privsim", "torch", "flwr", "opacus", "numpy", "flwr-datasets", "dp-accounting", "ray"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_outputs(result: RunResult, out_dir: Path) -> None:
    """summary.json and rounds.csv in ``out_dir`` (plots are written by simulator.plots)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(result.to_dict(), indent=2))
    plain = {*RoundRecord.CSV_FIELDS, *RoundRecord.LATENCY_CSV_FIELDS, *_PLAIN_FIELDS}
    extra_keys = sorted(
        {
            k
            for r in result.rounds
            for k, v in r.flat().items()
            if k not in plain and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    timed = any(r.simulated_seconds is not None for r in result.rounds)
    with open(out_dir / "rounds.csv", "w", newline="") as f:
        w = csv.writer(f)
        latency_cols = list(RoundRecord.LATENCY_CSV_FIELDS) if timed else []
        w.writerow([*RoundRecord.CSV_FIELDS, "rejected", "failed", "dropped", *latency_cols, *extra_keys])
        for r in result.rounds:
            flat = r.flat()
            w.writerow(
                [flat[k] for k in RoundRecord.CSV_FIELDS]
                + [len(r.rejected), len(r.failed), len(r.dropped)]
                + ([len(r.late), r.simulated_seconds] if timed else [])
                + [flat.get(k, "") for k in extra_keys]
            )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    digest TEXT NOT NULL,
    name TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,
    final_main_accuracy REAL,
    final_backdoor_accuracy REAL,
    out_dir TEXT,
    tag TEXT,
    summary_json TEXT
);
CREATE INDEX IF NOT EXISTS runs_digest ON runs(digest);
CREATE TABLE IF NOT EXISTS rounds (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    round INTEGER NOT NULL,
    main_accuracy REAL,
    record_json TEXT NOT NULL,
    PRIMARY KEY (run_id, round)
);
"""


class ResultsStore:
    """SQLite results store; every write is its own committed transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=60)
        con.execute("PRAGMA journal_mode=WAL")
        return con

    def start_run(self, *, digest: str, name: str, out_dir: str | None, tag: str | None = None) -> int:
        with self._connect() as con:
            cur = con.execute(
                "INSERT INTO runs(digest, name, started_at, status, out_dir, tag) VALUES (?,?,?,?,?,?)",
                (digest, name, time.time(), "running", out_dir, tag),
            )
            return int(cur.lastrowid or 0)

    def add_round(self, run_id: int, record: RoundRecord) -> None:
        with self._connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO rounds(run_id, round, main_accuracy, record_json) VALUES (?,?,?,?)",
                (run_id, record.round, record.main_accuracy, json.dumps(jsonable(record.flat()))),
            )

    def finish_run(self, run_id: int, result: RunResult) -> None:
        fin = result.final
        with self._connect() as con:
            con.execute(
                "UPDATE runs SET finished_at=?, status=?, final_main_accuracy=?, final_backdoor_accuracy=?, "
                "summary_json=? WHERE id=?",
                (
                    time.time(),
                    result.status,
                    fin.get("main_accuracy"),
                    fin.get("backdoor_accuracy"),
                    json.dumps(result.to_dict()),
                    run_id,
                ),
            )

    def fail_run(self, run_id: int, reason: str) -> None:
        with self._connect() as con:
            con.execute(
                "UPDATE runs SET finished_at=?, status=? WHERE id=?",
                (time.time(), f"failed: {reason}", run_id),
            )

    def finished(self, digest: str) -> dict[str, Any] | None:
        """The summary of the latest completed run with this scenario digest, if any."""
        with self._connect() as con:
            row = con.execute(
                "SELECT summary_json FROM runs WHERE digest=? AND summary_json IS NOT NULL "
                "AND status NOT LIKE 'failed%' ORDER BY id DESC LIMIT 1",
                (digest,),
            ).fetchone()
        return json.loads(row[0]) if row else None

    def runs(self) -> list[dict[str, Any]]:
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            rows = con.execute(
                "SELECT id, digest, name, started_at, finished_at, status, final_main_accuracy, "
                "final_backdoor_accuracy, out_dir, tag FROM runs ORDER BY id"
            ).fetchall()
        return [dict(r) for r in rows]

    def rounds(self, run_id: int) -> list[dict[str, Any]]:
        with self._connect() as con:
            rows = con.execute(
                "SELECT record_json FROM rounds WHERE run_id=? ORDER BY round", (run_id,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]
