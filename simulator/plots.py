"""PNG plots written beside the results (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_rounds", "pyplot"]


def pyplot():  # type: ignore[no-untyped-def]
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    # deferred: matplotlib loads only when a figure is drawn
    import matplotlib.pyplot as plt

    return plt


def plot_rounds(
    rounds: list[dict[str, Any]], out_dir: Path, *, title: str = "", attacker_rounds: list[int] | None = None
) -> list[Path]:
    """accuracy.png (main and, if present, backdoor accuracy; attacker rounds shaded) and loss.png."""
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = [r for r in rounds if r.get("main_accuracy") is not None]
    xs = [r["round"] for r in ev]
    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4))
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
    ax.set_title(title or "accuracy per round")
    fig.tight_layout()
    p = out_dir / "accuracy.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(6.4, 4))
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
    ax.set_title(title or "loss per round")
    fig.tight_layout()
    p = out_dir / "loss.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    return paths
