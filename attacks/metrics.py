"""Reconstruction quality metrics for gradient inversion (pure functions on image tensors).

Every metric takes images in [0, 1] of shape (B, C, H, W) and returns one value per image (a 1-D
tensor), and carries a ``higher_is_better`` attribute (the torchmetrics convention). Scores of a
batch attack are computed after :func:`match_batch` pairs each reconstruction with a true image
(Hungarian matching on MSE, as breaching's analysis does with LPIPS features).

An attack may return fewer images than the batch held (an analytic attack such as Robbing the Fed
returns one image per hit bin). A true image left without a reconstruction is scored against a
mid-grey image (every pixel 0.5: what an attacker who learnt nothing would guess) and counts as not
recovered in :func:`recovered_fraction`; extra reconstructions are left out.

>>> x = torch.zeros(1, 1, 4, 4); y = torch.full((1, 1, 4, 4), 0.1)
>>> round(float(psnr(x, y)[0]), 6)
20.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from attacks.base import Reconstruction

__all__ = [
    "LPIPS_SKIPPED",
    "UNMATCHED_FILL",
    "aligned",
    "label_accuracy",
    "lpips",
    "lpips_available",
    "match_batch",
    "mse",
    "psnr",
    "recovered_fraction",
    "score_reconstruction",
    "ssim",
]

LPIPS_SKIPPED = "skipped: no LPIPS weights"
#: the stand-in a true image without a matched reconstruction is scored against (mid-grey)
UNMATCHED_FILL = 0.5


def _higher_is_better(flag: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.higher_is_better = flag  # type: ignore[attr-defined]
        return fn

    return deco


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"expected two (B, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )


@_higher_is_better(False)
def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, shape (B,)."""
    _check(x, y)
    return (x.detach().double() - y.detach().double()).pow(2).flatten(1).mean(1)


@_higher_is_better(True)
def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB: ``10 log10(range² / MSE)`` (inf for identical images)."""
    m = mse(x, y)
    return 10.0 * torch.log10(torch.as_tensor(data_range, dtype=m.dtype) ** 2 / m)


def _gauss_window(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    r = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


@_higher_is_better(True)
def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per image (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004).

    The standard Gaussian-window SSIM: an 11×11 window of σ = 1.5 (truncated at 3.5σ, as
    ``skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)``),
    local statistics over the valid region only, averaged over the SSIM map and the channels.
    Images smaller than the window use the largest odd window that fits (a deviation the paper
    does not cover; skimage refuses such images).
    """
    _check(x, y)
    x, y = x.detach().double(), y.detach().double()
    size = 2 * int(3.5 * sigma + 0.5) + 1
    size = min(size, *(s if s % 2 else s - 1 for s in x.shape[-2:]))
    w1 = _gauss_window(size, sigma, x.dtype)
    c = x.shape[1]
    win = (w1[:, None] * w1[None, :]).expand(c, 1, size, size)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return smap.flatten(1).mean(1)


_LPIPS_MODEL: Any = None


def lpips_available() -> bool:
    """True when the ``lpips`` package and its AlexNet weights load without a download."""
    global _LPIPS_MODEL
    if _LPIPS_MODEL is not None:
        return True
    try:
        import lpips as _lp  # type: ignore[import-not-found]

        _LPIPS_MODEL = _lp.LPIPS(net="alex", verbose=False, pretrained=True)  # reads local files only
    except Exception:
        return False
    return True


@_higher_is_better(False)
def lpips(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """LPIPS-Alex distance per image (Zhang et al., CVPR 2018), or None when no weights are available
    locally (callers report :data:`LPIPS_SKIPPED`; never a made-up number)."""
    _check(x, y)
    if not lpips_available():
        return None
    with torch.no_grad():
        xx, yy = x.float(), y.float()
        if xx.shape[1] == 1:
            xx, yy = xx.repeat(1, 3, 1, 1), yy.repeat(1, 3, 1, 1)
        return _LPIPS_MODEL(xx * 2 - 1, yy * 2 - 1).flatten().double()


@_higher_is_better(True)
def label_accuracy(pred: torch.Tensor | None, true: torch.Tensor) -> float:
    """Fraction of true labels recovered, order-free (multiset overlap ÷ batch size), as in breaching.

    >>> label_accuracy(torch.tensor([3, 1, 1]), torch.tensor([1, 3, 2]))
    0.6666666666666666
    """
    if pred is None:
        return math.nan
    k = max(int(pred.max()) if pred.numel() else 0, int(true.max()) if true.numel() else 0) + 1
    a = torch.bincount(pred.long().flatten(), minlength=k)
    b = torch.bincount(true.long().flatten(), minlength=k)
    return float(torch.minimum(a, b).sum()) / max(int(true.numel()), 1)


def match_batch(recon: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """For each true image, the index of the reconstruction paired with it, or ``-1`` for none.

    One-to-one Hungarian matching (``scipy.optimize.linear_sum_assignment``) on the pairwise MSE,
    minimising the total MSE. With more reconstructions than true images the extra ones are left
    out; with fewer, ``len(truth) − len(recon)`` true images stay unmatched (``-1``).

    Parameters
    ----------
    recon, truth
        Images of shape (R, C, H, W) and (B, C, H, W).

    Returns
    -------
    numpy.ndarray
        ``order`` of shape (B,), int64: ``recon[order[i]]`` pairs with ``truth[i]`` where ``order[i] >= 0``.

    >>> t = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    >>> match_batch(t[1:], t).tolist()
    [-1, 0]
    """
    # deferred: scipy.optimize loads only when a batch is matched
    from scipy.optimize import linear_sum_assignment

    if recon.shape[1:] != truth.shape[1:]:
        raise ValueError(
            f"reconstructions {tuple(recon.shape)} and truth {tuple(truth.shape)} differ in image shape"
        )
    order = np.full(truth.shape[0], -1, dtype=np.int64)
    if recon.shape[0] == 0 or truth.shape[0] == 0:
        return order
    r = recon.detach().double().flatten(1)
    t = truth.detach().double().flatten(1)
    cost = torch.cdist(t, r).pow(2) / r.shape[1]  # (n_truth, n_recon)
    rows, cols = linear_sum_assignment(cost.numpy())
    order[rows] = cols
    return order


def aligned(recon: torch.Tensor, truth: torch.Tensor, order: np.ndarray | list[int]) -> torch.Tensor:
    """``recon`` reordered to line up with ``truth`` by :func:`match_batch`'s ``order``; mid-grey
    (:data:`UNMATCHED_FILL`) where a true image has no match. Used for scoring and for image grids."""
    order = np.asarray(order, dtype=np.int64)
    recon = recon.detach().float().cpu().clamp(0, 1)
    out = torch.full(truth.shape, UNMATCHED_FILL, dtype=recon.dtype)
    hit = torch.as_tensor(order >= 0)
    if bool(hit.any()):
        out[hit] = recon[torch.as_tensor(order[order >= 0])]
    return out


@_higher_is_better(True)
def recovered_fraction(recon: torch.Tensor, truth: torch.Tensor, *, threshold_db: float = 40.0) -> float:
    """Fraction of true images recovered: after one-to-one Hungarian matching on MSE
    (:func:`match_batch`), a true image counts when its matched reconstruction has a PSNR of at least
    ``threshold_db``; an unmatched true image never counts.

    40 dB is an RMS error of 1 % of the range: a visually exact copy (Robbing the Fed's exact
    recoveries score far above it, mixtures of two images far below).

    >>> t = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    >>> recovered_fraction(t[:1], t)
    0.5
    """
    if truth.shape[0] == 0:
        return math.nan
    order = match_batch(recon, truth)
    hit = order >= 0
    if not hit.any():
        return 0.0
    p = psnr(recon[torch.as_tensor(order[hit])], truth[torch.as_tensor(hit)])
    return float((p >= threshold_db).sum()) / int(truth.shape[0])


def score_reconstruction(
    recon: Reconstruction, true_x: torch.Tensor, true_y: torch.Tensor | None, *, threshold_db: float = 40.0
) -> dict[str, Any]:
    """Per-image and mean PSNR / SSIM / MSE (and LPIPS if available) after Hungarian matching, plus label
    accuracy and :func:`recovered_fraction`. Only the evaluator calls this: it is the one place that
    holds the ground truth.

    A true image without a matched reconstruction (the attack returned fewer images than the batch) is
    scored against a mid-grey image (:data:`UNMATCHED_FILL`), shown as ``"matched": -1`` in
    ``per_image`` and ``-1`` in ``order``; it counts as not recovered.
    """
    x = recon.images.detach().float().cpu().clamp(0, 1)
    t = true_x.detach().float().cpu()
    if x.shape[1:] != t.shape[1:]:
        raise ValueError(f"reconstruction shape {tuple(x.shape)} does not match the data {tuple(t.shape)}")
    order = match_batch(x, t)
    x = aligned(x, t, order)
    p, s, m = psnr(x, t), ssim(x, t), mse(x, t)
    lp = lpips(x, t)
    recovered = (torch.as_tensor(order >= 0) & (p >= threshold_db)).tolist()
    out: dict[str, Any] = {
        "psnr": float(p.mean()),
        "ssim": float(s.mean()),
        "mse": float(m.mean()),
        "psnr_max": float(p.max()),
        "lpips": None if lp is None else float(lp.mean()),
        "label_accuracy": label_accuracy(recon.labels, true_y) if true_y is not None else math.nan,
        "recovered_fraction": float(sum(recovered)) / max(int(t.shape[0]), 1),
        "recovered_threshold_db": threshold_db,
        "matched": int((order >= 0).sum()),
        "order": order.tolist(),
        "per_image": [
            {
                "index": i,
                "matched": int(order[i]),
                "recovered": bool(recovered[i]),
                "psnr": float(p[i]),
                "ssim": float(s[i]),
                "mse": float(m[i]),
                **({} if lp is None else {"lpips": float(lp[i])}),
            }
            for i in range(t.shape[0])
        ],
    }
    if lp is None:
        out["lpips_note"] = LPIPS_SKIPPED
    return out
