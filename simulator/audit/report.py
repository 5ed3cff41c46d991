"""Turn canary scores into the ``audit`` block of summary.json and an in/out histogram.

For every statistic (all-iterates max cosine and likelihood ratio, final-model cosine) it reports the one-run
lower bound ε̂ at the stated confidence (Steinke, Nasr, Jagielski, NeurIPS 2023, with the run's δ), a Gaussian
estimate in the spirit of Andrew et al. (ICLR 2024: the in/out scores read as a μ-GDP pair, ``μ = (mean_in −
mean_out) / pooled σ``, turned into ε(δ); an estimate, not a bound) and the in/out AUC.

The headline ``epsilon_lower`` is the bound of one statistic fixed before the scores are seen (no multiple
testing): the all-iterates likelihood ratio when the auditor knows the mechanism's noise, else the
all-iterates maximum cosine. The final-model threat is reported beside it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from simulator.audit.estimators import auc, epsilon_from_mu, gaussian_dp_mu, one_run_epsilon_lower_bound
from simulator.plots import fit_text, pyplot, save_figure, text_height, wrap

__all__ = ["audit_block", "headline_statistic", "plot_scores", "scores_figure"]


def _one(s_in: np.ndarray, s_out: np.ndarray, *, delta: float, confidence: float) -> dict[str, Any]:
    b = one_run_epsilon_lower_bound(s_in, s_out, delta=delta, confidence=confidence)
    try:
        mu = gaussian_dp_mu(s_in, s_out)
        est = epsilon_from_mu(mu, delta) if mu > 0 else 0.0
    except (ValueError, FloatingPointError):
        mu, est = math.nan, math.nan
    return {
        "epsilon_lower": b.epsilon_lower,
        "epsilon_gaussian_estimate": est,
        "mu": mu,
        "auc": auc(s_in, s_out),
        "guesses": b.guesses,
        "correct": b.correct,
        "in": len(s_in),
        "out": len(s_out),
    }


def headline_statistic(scores: dict[str, Any]) -> str:
    """The statistic fixed in advance: the all-iterates likelihood ratio when available, else the all-iterates
    maximum cosine, else (record level) the only one there is."""
    for name in ("all_iterates_likelihood", "all_iterates_max"):
        if name in scores:
            return name
    return next(iter(scores))


def audit_block(
    scores: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    delta: float,
    confidence: float,
    epsilon_upper: float,
    method: str,
    canaries: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``audit`` block of summary.json (see the module docstring)."""
    per = {
        name: _one(s_in, s_out, delta=delta, confidence=confidence) for name, (s_in, s_out) in scores.items()
    }
    head = headline_statistic(scores)
    h = per.get(head, {})
    block: dict[str, Any] = {
        "method": method,
        "canaries": canaries,
        "confidence": confidence,
        "delta": delta,
        "threat": "all_iterates" if head.startswith("all_iterates") else "final_model",
        "statistic": head,
        "epsilon_lower": h.get("epsilon_lower", 0.0),
        "epsilon_upper": epsilon_upper,
        "epsilon_gaussian_estimate": h.get("epsilon_gaussian_estimate"),
        "auc": h.get("auc"),
        "final_model": per.get("final_model"),
        "statistics": per,
    }
    if extra:
        block.update(extra)
    return block


def scores_figure(scores: dict[str, tuple[np.ndarray, np.ndarray]], *, title: str) -> Any:
    """One histogram panel per statistic: inserted vs not-inserted canaries' scores (texts fitted)."""
    plt = pyplot()
    n = max(len(scores), 1)
    width, fs = max(4.2 * n, 5.0), 10.0
    head = wrap(title, width - 0.3, fs)
    fig, axes = plt.subplots(
        1, n, figsize=(width, 3.4 + text_height(head, fs)), dpi=110, squeeze=False, layout="constrained"
    )
    for ax, (name, (s_in, s_out)) in zip(axes[0], scores.items()):
        lo = float(min(np.min(s_in, initial=0), np.min(s_out, initial=0)))
        hi = float(max(np.max(s_in, initial=0), np.max(s_out, initial=0)))
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-9, 40)
        ax.hist(s_out, bins=bins, alpha=0.6, label=f"not inserted ({len(s_out)})", color="tab:blue")
        ax.hist(s_in, bins=bins, alpha=0.6, label=f"inserted ({len(s_in)})", color="tab:red")
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.set_xlabel("score")
        ax.legend(fontsize=8)
    fig.suptitle(head, fontsize=fs)
    fit_text(fig)
    return fig


def plot_scores(scores: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, *, title: str) -> Path:
    """Write :func:`scores_figure` to ``path`` (PNG)."""
    return save_figure(scores_figure(scores, title=title), path)
