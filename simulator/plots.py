"""PNG plots written beside the results (matplotlib, Agg backend), and the layout helpers every figure uses.

Every figure of the project is built by a function that returns the :class:`~matplotlib.figure.Figure`
(``rounds_figures`` here, ``scores_figure`` in :mod:`simulator.audit.report`, ``grid_figure`` in
:mod:`simulator.experiment.leakage`, ``heatmap_figure`` / ``curve_figure`` in
:mod:`simulator.leaderboard.report`) and saved by another (:func:`save_figure`), so that a test can check the
layout of the very figure that is written. Figures use matplotlib's constrained layout, which makes room for
titles, labels, tick labels and colour bars; long titles and labels (a scenario name is often 40-80
characters, joined by underscores: a line may break after one) are wrapped to the figure's width, first by
:func:`wrap` (an estimate, used to size the figure), then by :func:`fit_text`, which measures each text with
the renderer and wraps again until it fits.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = [
    "fit_text",
    "plot_rounds",
    "pyplot",
    "rounds_figures",
    "save_figure",
    "text_height",
    "wrap",
]

#: pixels kept free between a text and the figure's edge
EDGE_PX = 3.0
#: average glyph width of the default sans-serif font, as a fraction of the font size (an estimate for
#: :func:`wrap`; :func:`fit_text` measures)
_GLYPH = 0.58


def pyplot():  # type: ignore[no-untyped-def]
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    # deferred: matplotlib loads only when a figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    # deferred: matplotlib loads only when a figure is drawn
    import matplotlib.pyplot as plt

    return plt


def _chunks(word: str, width: int) -> list[str]:
    """``word`` cut into pieces of at most ``width`` characters, after a ``_ . / -`` where it has one (a
    scenario name breaks between its parts), else anywhere."""
    if len(word) <= width:
        return [word]
    out, cur = [], ""
    for part in re.findall(r"[^_./-]*[_./-]|[^_./-]+$", word):
        if cur and len(cur) + len(part) > width:
            out.append(cur)
            cur = ""
        while len(part) > width:
            out.append(part[:width])
            part = part[width:]
        cur += part
    return [*out, cur] if cur else out


def _fill(text: str, chars: int) -> str:
    """Each line of ``text`` wrapped at ``chars`` characters: between words, and inside a longer word after
    one of ``_ . / -`` (:func:`_chunks`).

    >>> print(_fill("leaderboard_smoke_with_a_long_name: MA (higher is better)", 20))
    leaderboard_smoke_
    with_a_long_name: MA
    (higher is better)
    """
    width = max(int(chars), 6)
    lines = []
    for line in text.split("\n"):
        cur = ""
        for word in line.split():
            for k, piece in enumerate(_chunks(word, width)):
                sep = " " if k == 0 and cur else ""
                if cur and len(cur) + len(sep) + len(piece) > width:
                    lines.append(cur)
                    cur = piece
                else:
                    cur += sep + piece
        lines.append(cur)
    return "\n".join(lines)


def wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` wrapped to lines of about ``width_in`` inches at ``fontsize`` points (an estimate from the
    average glyph width; :func:`fit_text` corrects it against the renderer).

    >>> wrap("a b c d e f g h", 0.2, 10).count("\\n") > 0
    True
    """
    return _fill(text, int(width_in * 72.0 / (fontsize * _GLYPH)))


def text_height(text: str, fontsize: float) -> float:
    """The height in inches of ``text`` (its lines at matplotlib's 1.2 line spacing)."""
    return (text.count("\n") + 1) * fontsize * 1.2 / 72.0


def _wrappable(fig: Any) -> list[Any]:
    """The figure's titles (suptitle, axes titles), axis labels and legend titles: the texts that may be
    wrapped; tick labels and annotations are left as they are."""
    texts = [getattr(fig, a, None) for a in ("_suptitle", "_supxlabel", "_supylabel")]
    for ax in fig.axes:
        texts += [ax.title, getattr(ax, "_left_title", None), getattr(ax, "_right_title", None)]
        texts += [ax.xaxis.label, ax.yaxis.label]
        leg = ax.get_legend()
        if leg is not None:
            texts.append(leg.get_title())
    return [t for t in texts if t is not None and t.get_visible() and t.get_text().strip()]


def fit_text(fig: Any, *, passes: int = 6) -> None:
    """Wrap (then, if that is not enough, shrink) every title and axis label that overflows the figure.

    Each pass lays the figure out (its layout engine, without rendering pixels), measures every wrappable text
    (:func:`_wrappable`) with the renderer and re-wraps the ones that cross an edge to the width available
    around their anchor; a text that still crosses an edge along its lines' direction after wrapping, or
    across them (too many lines), gets a smaller font (down to 6 pt). A figure fitted before and unchanged
    since is left as it is without a new layout pass."""
    if getattr(fig, "_fitted_texts", None) == _signature(fig):
        return  # fitted before, and no title, label, font size or figure size changed since
    original: dict[int, str] = {}
    for _ in range(passes):
        fig.draw_without_rendering()  # layout and text extents, no pixels
        renderer = fig.canvas.get_renderer()
        w, h = fig.bbox.width, fig.bbox.height
        changed = False
        for t in _wrappable(fig):
            bb = t.get_window_extent(renderer)
            vertical = 45.0 < (t.get_rotation() % 180.0) < 135.0
            lo, hi, limit = (bb.y0, bb.y1, h) if vertical else (bb.x0, bb.x1, w)
            cross_lo, cross_hi, cross_limit = (bb.x0, bb.x1, w) if vertical else (bb.y0, bb.y1, h)
            along = lo < EDGE_PX or hi > limit - EDGE_PX
            across = cross_lo < 0 or cross_hi > cross_limit
            if not along and not across:
                continue
            key = id(t)
            orig = original.setdefault(key, t.get_text())
            lines = t.get_text().split("\n")
            longest = max(len(line) for line in lines) or 1
            if along:
                center = (lo + hi) / 2.0
                ha = "center" if vertical else t.get_horizontalalignment()
                if ha == "left":
                    avail = limit - lo - EDGE_PX
                elif ha == "right":
                    avail = hi - EDGE_PX
                else:
                    avail = 2.0 * min(center, limit - center) - 2.0 * EDGE_PX
                chars = int(avail / ((hi - lo) / longest) * 0.97)
                new = _fill(orig, min(chars, longest - 1))
                if new != t.get_text():
                    t.set_text(new)
                    changed = True
                    continue
            if t.get_fontsize() > 6.0:  # wrapping cannot help (or did not): a smaller font
                t.set_fontsize(max(6.0, t.get_fontsize() * 0.9))
                changed = True
        if not changed:
            fig._fitted_texts = _signature(fig)
            return


def _signature(fig: Any) -> tuple[Any, ...]:
    """What :func:`fit_text` depends on: the figure's size and dpi, its wrappable texts and their sizes."""
    texts = tuple((id(t), t.get_text(), t.get_fontsize()) for t in _wrappable(fig))
    return (tuple(fig.get_size_inches()), fig.dpi, texts)


def save_figure(fig: Any, path: Path, *, dpi: float | None = None) -> Path:
    """Fit the figure's texts (:func:`fit_text`), write it as a PNG at ``path`` (at the figure's own dpi
    unless ``dpi`` is given) and free it."""
    plt = pyplot()
    if dpi is not None:
        fig.set_dpi(dpi)
    fit_text(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi="figure")
    plt.close(fig)
    return path


def rounds_figures(
    rounds: list[dict[str, Any]], *, title: str = "", attacker_rounds: list[int] | None = None
) -> dict[str, Any]:
    """The per-round figures: ``"accuracy"`` (main and, if present, backdoor accuracy; attacker rounds shaded)
    and ``"loss"`` (test loss and mean client train loss), titled ``title``; texts fitted."""
    plt = pyplot()
    ev = [r for r in rounds if r.get("main_accuracy") is not None]
    xs = [r["round"] for r in ev]
    size, fs = (6.4, 4.0), 12.0
    figs: dict[str, Any] = {}

    fig, ax = plt.subplots(figsize=size, dpi=120, layout="constrained")
    ax.plot(xs, [r["main_accuracy"] for r in ev], marker="o", ms=3, label="main accuracy")
    if any(r.get("backdoor_accuracy") is not None for r in ev):
        bx = [r["round"] for r in ev if r.get("backdoor_accuracy") is not None]
        ax.plot(
            bx,
            [r["backdoor_accuracy"] for r in ev if r.get("backdoor_accuracy") is not None],
            marker="s",
            ms=3,
            color="tab:red",
            label="backdoor accuracy",
        )
    for i, r in enumerate(attacker_rounds or []):
        ax.axvspan(
            r - 0.5, r + 0.5, color="tab:red", alpha=0.08, lw=0, label="attacker round" if i == 0 else None
        )
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(wrap(title or "accuracy per round", size[0] - 1.0, fs), fontsize=fs)
    figs["accuracy"] = fig

    fig, ax = plt.subplots(figsize=size, dpi=120, layout="constrained")
    ax.plot(xs, [r["main_loss"] for r in ev], marker="o", ms=3, label="test loss")
    tr = [r for r in rounds if r.get("train_loss") is not None]
    ax.plot(
        [r["round"] for r in tr],
        [r["train_loss"] for r in tr],
        marker=".",
        ms=3,
        label="mean client train loss",
    )
    ax.set_xlabel("round")
    ax.set_ylabel("cross-entropy")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(wrap(title or "loss per round", size[0] - 1.0, fs), fontsize=fs)
    figs["loss"] = fig
    for f in figs.values():
        fit_text(f)
    return figs


def plot_rounds(
    rounds: list[dict[str, Any]], out_dir: Path, *, title: str = "", attacker_rounds: list[int] | None = None
) -> list[Path]:
    """accuracy.png (main and, if present, backdoor accuracy; attacker rounds shaded) and loss.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = rounds_figures(rounds, title=title, attacker_rounds=attacker_rounds)
    return [save_figure(fig, out_dir / f"{name}.png") for name, fig in figs.items()]
