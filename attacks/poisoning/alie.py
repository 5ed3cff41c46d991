"""ALIE, "A Little Is Enough" (Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses
For Distributed Learning", NeurIPS 2019, arXiv:1902.06156).

Every attacker sends the same update ``μ − z·σ``, where ``μ`` and ``σ`` are the coordinate-wise mean
and standard deviation of the benign updates. The shift is small enough (inside the benign spread) to
survive median, trimmed mean, Krum and Bulyan, yet consistent across rounds. The paper chooses ``z``
so that the attackers, together with enough benign "supporters", form a majority (its attack algorithm):

    s = ⌊n/2 + 1⌋ − f          (benign workers needed on the attackers' side),
    z_max = Φ⁻¹((n − s)/n),

with ``n`` all workers of the round and ``f`` the attackers.

Differences from public code (this module follows the paper): FLPoison computes
``Φ⁻¹((n − f − s)/(n − f))`` (the fraction over the benign workers only), which is smaller (0.25
instead of 0.47 for n = 50, f = 10); the NDSS'21 code of Shejwalkar & Houmansadr hard-codes z per f. FLPoison
adds ``+z·σ``; the sign only picks the side (pass a negative ``z`` for ``μ + |z|·σ``). The standard deviation
here is the sample one (Bessel-corrected, ``torch.std``); the paper does not say which.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from attacks.poisoning._common import check_benign, mean_std, rows_of

__all__ = ["alie_updates", "alie_z_max"]


def alie_z_max(*, num_clients: int, num_malicious: int) -> float:
    """``z_max = Φ⁻¹((n − s)/n)`` with ``s = ⌊n/2 + 1⌋ − f`` (Baruch et al., 2019).

    Parameters
    ----------
    num_clients : int
        ``n``, all workers whose updates are aggregated in the round (benign and malicious).
    num_malicious : int
        ``f``, the attackers among them.

    Returns
    -------
    float
        ``z_max``; negative for ``f = 0`` (no attack needed), growing with ``f``.

    Raises
    ------
    ValueError
        If ``s ≤ 0`` (the attackers alone are a majority: ``(n − s)/n ≥ 1`` and Φ⁻¹ is infinite; pass
        ``z`` to :func:`alie` instead) or the counts are inconsistent.

    >>> round(alie_z_max(num_clients=50, num_malicious=10), 4)  # s = 16, Φ⁻¹(34/50)
    0.4677
    """
    if num_clients < 1 or not 0 <= num_malicious <= num_clients:
        raise ValueError(
            f"need 0 <= num_malicious <= num_clients and num_clients >= 1, got "
            f"n={num_clients}, f={num_malicious}"
        )
    s = math.floor(num_clients / 2 + 1) - num_malicious
    if s <= 0:
        raise ValueError(
            f"s = floor(n/2 + 1) - f = {s} <= 0 for n={num_clients}, f={num_malicious}: "
            "z_max is infinite; pass z explicitly"
        )
    return NormalDist().inv_cdf((num_clients - s) / num_clients)


def alie_updates(
    benign: torch.Tensor, *, num_malicious: int, num_clients: int | None = None, z: float | None = None
) -> torch.Tensor:
    """ALIE malicious updates ``μ − z·σ`` (Baruch et al., NeurIPS 2019).

    Parameters
    ----------
    benign : torch.Tensor
        ``(n_b, d)`` updates the attackers know (at least two rows, for ``σ``): the benign updates of
        the round (omniscient) or the attackers' own honest updates (the paper's setting).
    num_malicious : int
        ``f``, number of malicious updates to return.
    num_clients : int | None
        ``n`` for ``z_max``; default ``n_b + f`` (right for the omniscient input; pass the true round
        size when ``benign`` holds only the attackers' own updates).
    z : float | None
        Override ``z_max``.

    Returns
    -------
    torch.Tensor
        ``(f, d)``: ``f`` identical rows.
    """
    check_benign(benign, num_malicious=num_malicious, min_rows=2)
    if z is None:
        n = benign.shape[0] + num_malicious if num_clients is None else num_clients
        z = alie_z_max(num_clients=n, num_malicious=num_malicious)
    mu, sd = mean_std(benign)
    return rows_of(mu - z * sd, num_malicious, benign)
