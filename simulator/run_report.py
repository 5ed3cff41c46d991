"""One run as one page: ``<run folder>/report.html`` (``privsim report <run folder>``; after every run too).

The page is a single self-contained HTML file (inline CSS, images as base64 ``data:`` URIs, no network), so it
can be mailed or attached to an issue. It shows what the run folder holds, formatted for people:

* the scenario (name, description, source file, the resolved scenario as run) and the run's status;
* the headline numbers (final and best main accuracy, ε, attack success, wall time ...);
* the round table (``rounds.csv``);
* every plot (``*.png``) and every reconstruction grid (``reconstruction*.png``, ``inversion/*.png``);
* every block of ``summary.json`` (privacy, audit, defense, attack, inversion, communication ...), as tables;
* the software versions, the files in the folder and the end of each log (``engine.log``, ``flower/*.log``).

Numbers follow one rule set (:func:`format_value`): ε to 3 significant digits, accuracies and rates to 4
decimals, seconds to 2, PSNR in dB (an exact reconstruction's infinite PSNR is "∞ (exact)"), bytes in kB, MB,
GB.
This module reads only the run folder: it needs nothing from the runtime or the plug-ins.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import mimetypes
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "REPORT_NAME",
    "ReportError",
    "fmt_accuracy",
    "fmt_epsilon",
    "fmt_seconds",
    "format_value",
    "render_report",
    "write_report",
]

REPORT_NAME = "report.html"
_IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".gif", ".svg")
_MAX_RECONSTRUCTIONS = 64  # grids embedded; the rest are listed by name
_LOG_TAIL_LINES = 60
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# summary.json keys shown in the header and the headline, not as blocks of their own
_HEADER_KEYS = {
    "name",
    "status",
    "seed",
    "engine",
    "scenario_digest",
    "versions",
    "wall_time_s",
    "simulated_time_s",
    "final",
    "best",
    "rounds",
    "scenario",
    "out_dir",
    "kind",
}
# the blocks in the order a reader wants them; any other block of summary.json follows, by name
_BLOCK_ORDER = (
    "privacy",
    "audit",
    "defense",
    "attack",
    "inversion",
    "client",
    "payload",
    "images",
    "communication",
    "latency",
    "replies",
    "warm_start",
)
_BLOCK_TITLES = {
    "privacy": "Privacy (the accountant's ε: an upper bound)",
    "audit": "Privacy audit (ε̂ from canaries: a lower bound)",
    "defense": "Defense",
    "attack": "Attack",
    "inversion": "Inversion attack",
    "client": "The victim client",
    "payload": "What the server received",
    "images": "The victim's images (data set indices)",
    "communication": "Communication",
    "latency": "Simulated time and late clients",
    "replies": "Replies that did not enter the aggregate",
    "warm_start": "Warm start",
}


class ReportError(ValueError):
    """The folder is not a run folder (no summary.json, or one that is not a run's)."""


# ---------------------------------------------------------------------------------------------- numbers
def _number(x: Any) -> float | None:
    """A float from a number or from summary.json's "inf" / "-inf" strings; None for anything else."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, str) and x.strip().lower() in ("inf", "+inf", "infinity", "-inf", "-infinity", "nan"):
        return float(x.strip().lower().replace("infinity", "inf"))
    return None


def fmt_epsilon(x: Any) -> str:
    """ε to 3 significant digits (``3.02``, ``4.80``, ``12.3``, ``0.0512``, ``1230``); ``inf`` for no DP
    guarantee."""
    v = _number(x)
    if v is None or math.isnan(v):
        return "–"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    r = float(f"{v:.3g}")
    if abs(r) >= 1000:  # 3 significant digits without an exponent
        return f"{r:.0f}"
    return f"{v:#.3g}".rstrip(".")  # keeps trailing zeros: 4.80, 10.0


def fmt_accuracy(x: Any) -> str:
    """An accuracy or a rate to 4 decimals; "–" when there is none."""
    v = _number(x)
    return "–" if v is None or math.isnan(v) else f"{v:.4f}"


def fmt_seconds(x: Any) -> str:
    """Seconds to 2 decimals, with the unit."""
    v = _number(x)
    return "–" if v is None or math.isnan(v) else f"{v:.2f} s"


def _fmt_bytes(v: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.0f} B"


_FIXED4 = {"accuracy", "tpr", "fpr", "auc", "ssim", "fraction", "loss", "losses", "lpips", "quantile"}


def _kind(key: str) -> str | None:
    """How a number under this key is formatted (None: by its type), from the words of the key."""
    words = set(key.lower().split("_"))
    if words & {"epsilon", "epsilons", "eps"}:
        return "epsilon"
    if "delta" in words:
        return "sci"
    if "psnr" in words:
        return "db"
    if "db" in words:
        return "db_plain"
    if any("bytes" in w for w in words):
        return "bytes"
    if key.lower().endswith("_s") or words & {"seconds", "s"}:
        return "seconds"
    if "ratio" in words:
        return "ratio"
    if words & _FIXED4:
        return "fixed4"
    return None


def format_value(key: str, value: Any) -> str:
    """``value`` as a person reads it, by what its key says it is (see the module doc). Plain text."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    kind = _kind(key)
    v = _number(value)
    if v is None:
        return str(value)
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        if kind == "db":
            return "∞ (exact)" if v > 0 else "-∞"
        return "∞" if v > 0 else "-∞"
    if kind == "epsilon":
        return fmt_epsilon(v)
    if kind == "sci":
        return f"{v:.3g}"
    if kind == "db":
        return f"{v:.2f} dB"
    if kind == "db_plain":
        return f"{v:.4g} dB"
    if kind == "bytes":
        return _fmt_bytes(v)
    if kind == "seconds":
        return fmt_seconds(v)
    if kind == "ratio":
        return f"{v:.3g}×"
    if kind == "fixed4":
        return fmt_accuracy(v)
    if isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip())):
        n = int(v)
        return f"{n:,}" if abs(n) >= 10_000 and "seed" not in key.lower() else str(n)
    return f"{v:.4g}"


def _cell(key: str, value: Any) -> str:
    """A table cell: the formatted value, right-aligned when a number, with the raw value as its title."""
    text = html.escape(format_value(key, value))
    if _number(value) is not None:
        raw = html.escape(str(value), quote=True)
        return f'<td class="num" title="{raw}">{text}</td>'
    return f"<td>{text}</td>"


def _label(key: str) -> str:
    return html.escape(key.replace("_", " "))


# ---------------------------------------------------------------------------------------------- blocks
def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _render(key: str, value: Any, depth: int = 0) -> str:
    """Any JSON value under ``key`` as HTML: nested tables for dicts and lists of dicts (collapsed when long
    or deep), comma-separated text for lists of scalars."""
    if _is_scalar(value):
        return html.escape(format_value(key, value))
    if isinstance(value, list) and all(_is_scalar(x) for x in value):
        shown = [format_value(key, x) for x in value[:24]]
        more = f" … ({len(value)} in all)" if len(value) > 24 else ""
        return html.escape(", ".join(shown) + more) if value else "(none)"
    if depth >= 3:
        text = json.dumps(value, ensure_ascii=False)
        if len(text) <= 120:
            return f"<code>{html.escape(text)}</code>"
        return (
            f"<details><summary>{html.escape(text[:100])} …</summary>"
            f'<pre class="json">{html.escape(json.dumps(value, indent=1, ensure_ascii=False))}</pre>'
            "</details>"
        )
    if isinstance(value, Mapping):
        inner = _kv_table(value, depth + 1, parent=key)
        n = len(value)
    elif all(isinstance(x, Mapping) for x in value):
        inner = _records_table(key, value, depth + 1)
        n = len(value)
    else:
        inner = "<ul>" + "".join(f"<li>{_render(key, x, depth + 1)}</li>" for x in value) + "</ul>"
        n = len(value)
    if (depth >= 1 and n > 8) or key == "ledger":
        return f"<details><summary>{n} entries</summary>{inner}</details>"
    return inner


def _within(key: str, parent: str) -> str:
    """The key that says how a value is formatted: its own, or its parent's when its own says nothing
    (``epsilons: {aggregate: 4.85}`` is an ε; ``compression_ratio: {up: 10.2}`` a ratio)."""
    return key if _kind(key) is not None or _kind(parent) is None else parent


def _kv_table(d: Mapping[str, Any], depth: int = 0, parent: str = "") -> str:
    rows = []
    for k, v in d.items():
        kk = _within(k, parent)
        if _is_scalar(v):
            rows.append(f"<tr><th>{_label(k)}</th>{_cell(kk, v)}</tr>")
        else:
            rows.append(f"<tr><th>{_label(k)}</th><td>{_render(kk, v, depth)}</td></tr>")
    return f'<table class="kv">{"".join(rows)}</table>'


def _records_table(key: str, records: list[Any], depth: int = 0) -> str:
    cols: list[str] = []
    for r in records:
        cols.extend(c for c in r if c not in cols)
    head = "".join(f'<th title="{html.escape(c)}">{_label(c)}</th>' for c in cols)
    body = []
    for r in records:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(_cell(c, v) if _is_scalar(v) else f"<td>{_render(c, v, depth)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


# ---------------------------------------------------------------------------------------------- sections
def _headline(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs for the cards at the top."""
    cards: list[tuple[str, str]] = []
    fin = summary.get("final") or {}
    best = summary.get("best") or {}
    scenario = summary.get("scenario") or {}
    if fin.get("main_accuracy") is not None:
        cards.append((f"main accuracy (round {fin.get('round')})", fmt_accuracy(fin["main_accuracy"])))
    if best.get("main_accuracy") is not None and best["main_accuracy"] != fin.get("main_accuracy"):
        cards.append((f"best main accuracy (round {best.get('round')})", fmt_accuracy(best["main_accuracy"])))
    if fin.get("backdoor_accuracy") is not None:
        cards.append(("backdoor accuracy", fmt_accuracy(fin["backdoor_accuracy"])))
    priv = summary.get("privacy")
    if isinstance(priv, Mapping) and "epsilon" in priv:
        delta = priv.get("delta")
        label = f"ε ({priv.get('level', '')}-level" + (f", δ = {delta:.3g})" if _number(delta) else ")")
        cards.append((label, fmt_epsilon(priv["epsilon"])))
    audit = summary.get("audit")
    if isinstance(audit, Mapping) and "epsilon_lower" in audit:
        cards.append(("audit ε̂ (lower bound)", fmt_epsilon(audit["epsilon_lower"])))
    inv = summary.get("inversion")
    if isinstance(inv, Mapping):
        if inv.get("refused"):
            cards.append(("inversion", "refused by the client"))
        elif "psnr" in inv:
            cards.append(("reconstruction PSNR (mean)", format_value("psnr", inv.get("psnr"))))
        if inv.get("ssim") is not None:
            cards.append(("SSIM", fmt_accuracy(inv["ssim"])))
        if inv.get("recovered_fraction") is not None:
            cards.append(("images recovered (≥ 40 dB)", f"{float(inv['recovered_fraction']):.0%}"))
    rounds = summary.get("rounds") or []
    planned = (scenario.get("federation") or {}).get("rounds")
    if rounds or summary.get("kind", "federated") == "federated":
        cards.append(("rounds", f"{len(rounds)}" + (f" / {planned}" if planned else "")))
    cards.append(("wall time", fmt_seconds(summary.get("wall_time_s"))))
    if summary.get("simulated_time_s") is not None:
        cards.append(("simulated time", fmt_seconds(summary["simulated_time_s"])))
    comm = summary.get("communication")
    if isinstance(comm, Mapping) and comm.get("bytes_up"):
        cards.append(("sent up / down", f"{_fmt_bytes(comm['bytes_up'])} / {_fmt_bytes(comm['bytes_down'])}"))
        ratio = comm.get("compression_ratio")
        up = _number(ratio.get("up")) if isinstance(ratio, Mapping) else None
        if up is not None and abs(up - 1.0) > 0.01:
            cards.append(("upload compression", format_value("ratio", up)))
    return cards


def _rounds_table(path: Path) -> str:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return "<p>rounds.csv has no rows.</p>"
    cols = list(rows[0])
    head = "".join(f'<th title="{html.escape(c)}">{_label(c)}</th>' for c in cols)
    body = "".join("<tr>" + "".join(_cell(c, _csv_value(r.get(c))) for c in cols) + "</tr>" for r in rows)
    return (
        f'<div class="scroll"><table class="grid" id="rounds"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _csv_value(s: str | None) -> Any:
    if s is None or s == "":
        return None
    if re.fullmatch(r"-?\d+", s):
        return int(s)
    try:
        return float(s)
    except ValueError:
        return s


def _images(run: Path) -> tuple[list[Path], list[Path]]:
    """(plots, reconstruction grids) in the run folder, each in reading order."""
    found = [
        p
        for p in run.rglob("*")
        if p.is_file() and p.suffix.lower() in _IMAGE_TYPES and not p.name.startswith(".")
    ]
    recon = sorted(
        (
            p
            for p in found
            if "inversion" in p.relative_to(run).parts[:-1] or p.stem.startswith("reconstruction")
        ),
        key=lambda p: str(p.relative_to(run)),
    )
    first = {"accuracy": 0, "loss": 1}
    plots = sorted(
        (p for p in found if p not in recon),
        key=lambda p: (len(p.relative_to(run).parts), first.get(p.stem, 2), str(p.relative_to(run))),
    )
    return plots, recon


def _figure(run: Path, p: Path, caption: str = "") -> str:
    mime = mimetypes.guess_type(p.name)[0] or "image/png"
    data = base64.b64encode(p.read_bytes()).decode("ascii")
    rel = html.escape(str(p.relative_to(run)))
    text = f"{html.escape(caption)} · {rel}" if caption else rel
    return (
        f'<figure><img src="data:{mime};base64,{data}" alt="{rel}"><figcaption>{text}</figcaption></figure>'
    )


def _recon_caption(p: Path, summary: Mapping[str, Any]) -> str:
    """What the attack scored on this grid: an in-run grid's round and client (``round003_client7.png``) from
    ``inversion.per_attack``, a leakage experiment's from the ``inversion`` block."""
    inv = summary.get("inversion")
    if not isinstance(inv, Mapping):
        return ""
    m = re.fullmatch(r"round(\d+)_client(\d+)", p.stem)
    scores: Mapping[str, Any] | None = inv
    label = "mean over the images"
    if m is not None:
        rnd, client = int(m.group(1)), int(m.group(2))
        label = f"round {rnd}, client {client}"
        scores = next(
            (a for a in inv.get("per_attack") or [] if a.get("round") == rnd and a.get("client") == client),
            None,
        )
    if scores is None:
        return label
    parts: list[str] = []
    if "psnr" in scores:
        parts.append(f"PSNR {format_value('psnr', scores['psnr'])}")
    if scores.get("ssim") is not None:
        parts.append(f"SSIM {fmt_accuracy(scores['ssim'])}")
    if scores.get("label_accuracy") is not None:
        parts.append(f"label accuracy {fmt_accuracy(scores['label_accuracy'])}")
    return f"{label}: {', '.join(parts)}" if parts else label


def _files(run: Path) -> str:
    items = []
    for p in sorted(run.rglob("*")):
        if p.is_file() and p.name != REPORT_NAME:
            items.append(
                f"<tr><td><code>{html.escape(str(p.relative_to(run)))}</code></td>"
                f'<td class="num">{_fmt_bytes(p.stat().st_size)}</td></tr>'
            )
    return f'<table class="grid">{"".join(items)}</table>'


def _log_tail(run: Path, path: Path) -> str:
    name = html.escape(str(path.relative_to(run)))
    text = _ANSI.sub("", path.read_text(encoding="utf-8", errors="replace"))  # Flower colours its levels
    lines = text.splitlines()
    if not lines:
        return f"<p><code>{name}</code> is empty.</p>"
    tail = lines[-_LOG_TAIL_LINES:]
    note = f"the last {len(tail)} of {len(lines)} lines" if len(lines) > len(tail) else f"{len(lines)} lines"
    body = html.escape("\n".join(tail))
    return f"<details><summary><code>{name}</code> ({note})</summary><pre>{body}</pre></details>"


def _logs(run: Path) -> list[Path]:
    """engine.log (this process's Flower / Ray lines), then the logs of Flower's runtime processes."""
    first = [run / "engine.log"] if (run / "engine.log").is_file() else []
    return first + sorted(p for p in run.rglob("*.log") if p.is_file() and p not in first)


_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #1d2330; background: #f6f7f9; margin: 0; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 60px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #e3e6eb; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.desc { margin: 2px 0 10px; color: #4a5263; }
.meta { color: #4a5263; font-size: 13px; }
.meta code { font-size: 12px; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-weight: 600; font-size: 13px; }
.badge.ok { background: #dcf3e3; color: #15602d; } .badge.stopped { background: #fff1cc; color: #7a5300; }
.badge.failed { background: #fbdada; color: #8a1616; }
nav { margin: 14px 0 0; font-size: 13px; } nav a { margin-right: 12px; color: #2456a6; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 16px 0 4px; }
.card { border: 1px solid #dfe3ea; border-radius: 8px; padding: 8px 14px; min-width: 150px;
        background: #fbfcfd; }
.card .v { font-size: 22px; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .l { font-size: 12px; color: #5a6273; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0; }
td, th { border: 1px solid #e1e4ea; padding: 3px 8px; vertical-align: top; text-align: left; }
table.grid thead th { background: #eef1f5; position: sticky; top: 0; max-width: 96px; font-size: 12px;
                     vertical-align: bottom; }
table.grid tbody tr:nth-child(even) { background: #f8f9fb; }
table.kv > tbody > tr > th, table.kv > tr > th { background: #f3f5f8; font-weight: 600; white-space: nowrap; }
table.kv td.num { text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.scroll { max-height: 640px; overflow: auto; border: 1px solid #e1e4ea; }
.scroll table { margin: 0; }
figure { display: inline-block; margin: 6px 10px 14px 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4ea; }
.figs, .recons { display: grid; grid-template-columns: repeat(auto-fill, minmax(500px, 1fr)); gap: 4px 14px; }
.figs figure, .recons figure { margin: 6px 0 10px; }
figcaption { font-size: 12px; color: #5a6273; }
pre { background: #f5f6f8; border: 1px solid #e1e4ea; padding: 8px; font-size: 12px; overflow: auto;
      max-height: 520px; }
details > summary { cursor: pointer; color: #2456a6; }
code { font-size: 12px; }
.note { font-size: 13px; color: #5a6273; }
"""

# sets <body data-images-loaded="true|false" data-images-total=N data-images-ok=M> once the page has loaded
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.imagesTotal = String(imgs.length);
  document.body.dataset.imagesOk = String(ok);
  document.body.dataset.imagesLoaded = ok === imgs.length ? "true" : "false";
});
"""


def _status_badge(status: str) -> str:
    cls = "ok" if status == "completed" else ("failed" if status.startswith("failed") else "stopped")
    return f'<span class="badge {cls}">{html.escape(status)}</span>'


def _previous_source(run: Path) -> str | None:
    """The scenario file named by an earlier report of this folder (summary.json does not keep it)."""
    p = run / REPORT_NAME
    if not p.is_file():
        return None
    m = re.search(r'<meta name="privsim-source" content="([^"]*)">', p.read_text(errors="replace")[:4000])
    return html.unescape(m.group(1)) if m and m.group(1) else None


def _blocks(summary: Mapping[str, Any]) -> list[tuple[str, Any]]:
    names = [k for k in _BLOCK_ORDER if summary.get(k) is not None]
    names += sorted(k for k in summary if k not in _HEADER_KEYS and k not in names and summary[k] is not None)
    return [(k, summary[k]) for k in names]


def render_report(run_dir: str | Path, *, source: str | None = None) -> str:
    """The HTML of the run folder's report (see the module doc). ``source``: the scenario file it ran."""
    run = Path(run_dir)
    sp = run / "summary.json"
    if not sp.is_file():
        raise ReportError(
            f"{run}: no summary.json here; give the folder of a finished run (privsim run --out)"
        )
    try:
        summary = json.loads(sp.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{sp}: not valid JSON ({e})") from e
    if not isinstance(summary, dict) or "name" not in summary or "status" not in summary:
        raise ReportError(f"{sp}: not a privsim run summary (no 'name' / 'status')")
    source = source or _previous_source(run)
    scenario = summary.get("scenario") or {}
    name = str(summary["name"])
    status = str(summary["status"])
    finished = datetime.fromtimestamp(sp.stat().st_mtime).strftime("%Y-%m-%d %H:%M:%S")

    meta = [
        f"{html.escape(str(summary.get('kind', 'federated')))} run",
        f"engine <b>{html.escape(str(summary.get('engine')))}</b>",
        f"seed {html.escape(str(summary.get('seed')))}",
        f"digest <code>{html.escape(str(summary.get('scenario_digest')))}</code>",
        f"finished {finished}",
    ]
    src = (
        f"scenario file <code>{html.escape(source)}</code>"
        if source
        else "scenario file not recorded (the resolved scenario is below)"
    )
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="privsim-source" content="{html.escape(source or "", quote=True)}">',
        f"<title>{html.escape(name)}: privsim run report</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>{html.escape(name)} {_status_badge(status)}</h1>",
    ]
    if scenario.get("description"):
        out.append(f'<p class="desc">{html.escape(str(scenario["description"]))}</p>')
    out.append(
        f'<div class="meta">{" · ".join(meta)}<br>{src} · folder <code>{html.escape(str(run))}</code></div>'
    )

    plots, recon = _images(run)
    blocks = _blocks(summary)
    toc = [("summary", "Summary")]
    if (run / "rounds.csv").is_file():
        toc.append(("rounds", "Rounds"))
    if plots:
        toc.append(("plots", "Plots"))
    if recon:
        toc.append(("reconstructions", "Reconstructions"))
    toc += [(f"block-{k}", k.replace("_", " ")) for k, _ in blocks]
    toc += [("scenario", "Scenario"), ("environment", "Environment and files")]
    out.append("<nav>" + "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in toc) + "</nav>")

    out.append('<h2 id="summary">Summary</h2><div class="cards">')
    for label, value in _headline(summary):
        out.append(
            f'<div class="card"><div class="v">{html.escape(value)}</div>'
            f'<div class="l">{html.escape(label)}</div></div>'
        )
    out.append("</div>")

    if (run / "rounds.csv").is_file():
        out.append('<h2 id="rounds">Rounds</h2>')
        out.append('<p class="note">rounds.csv; hover a cell for its exact value.</p>')
        out.append(_rounds_table(run / "rounds.csv"))
    if plots:
        out.append('<h2 id="plots">Plots</h2>')
        out.append('<div class="figs">' + "".join(_figure(run, p) for p in plots) + "</div>")
    if recon:
        out.append('<h2 id="reconstructions">Reconstructions</h2>')
        out.append(
            '<p class="note">Top row: the client\'s images; bottom row: what the attack reconstructed.</p>'
        )
        grids = [_figure(run, p, _recon_caption(p, summary)) for p in recon[:_MAX_RECONSTRUCTIONS]]
        out.append('<div class="recons">' + "".join(grids))
        out.append("</div>")
        if len(recon) > _MAX_RECONSTRUCTIONS:
            rest = ", ".join(str(p.relative_to(run)) for p in recon[_MAX_RECONSTRUCTIONS:])
            out.append(
                f'<p class="note">{len(recon) - _MAX_RECONSTRUCTIONS} more in the folder: '
                f"{html.escape(rest)}</p>"
            )

    for key, value in blocks:
        title = _BLOCK_TITLES.get(key, key.replace("_", " ").capitalize())
        out.append(f'<h2 id="block-{html.escape(key)}">{html.escape(title)}</h2>')
        if isinstance(value, Mapping):
            out.append(_kv_table(value))
        else:
            out.append(f"<p>{_render(key, value)}</p>")

    out.append('<h2 id="scenario">Scenario, as run (resolved)</h2>')
    out.append(f'<pre class="json">{html.escape(json.dumps(scenario, indent=2, ensure_ascii=False))}</pre>')
    out.append('<h2 id="environment">Environment and files</h2>')
    if isinstance(summary.get("versions"), Mapping):
        out.append("<h3>Versions</h3>" + _kv_table(summary["versions"]))
    out.append("<h3>Files in the run folder</h3>" + _files(run))
    logs = _logs(run)
    if logs:
        out.append(
            "<h3>Logs</h3><p class=\"note\">Flower's and Ray's log lines, kept out of the terminal "
            "(<code>privsim run --verbose</code> shows this process's too).</p>"
        )
        out += [_log_tail(run, p) for p in logs]
    out.append(f"</main><script>{_SCRIPT}</script></body></html>")
    return "\n".join(out)


def write_report(run_dir: str | Path, *, source: str | None = None, out: str | Path | None = None) -> Path:
    """Write the report (default ``<run_dir>/report.html``); returns its path."""
    run = Path(run_dir)
    path = Path(out) if out is not None else run / REPORT_NAME
    text = render_report(run, source=source)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
