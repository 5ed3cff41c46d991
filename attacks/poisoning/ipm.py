"""IPM, inner-product manipulation (Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant
SGD by Inner Product Manipulation", UAI 2019, PMLR 115 (published 2020), arXiv:1903.03936).

Every attacker sends ``−ε·μ`` with ``μ`` the mean of the benign updates. Then ``⟨−ε μ, μ⟩ = −ε‖μ‖² < 0``
for any ``ε > 0``. A small ``ε`` (the paper: 0.1) keeps the malicious updates close to the benign ones
for distance-based rules (Krum, coordinate-wise median with many attackers); a large ``ε`` breaks the
plain mean: with ``n_b`` benign and ``f`` malicious updates the mean of all ``n_b + f`` is
``(n_b − f·ε)/(n_b + f) · μ``, whose inner product with ``μ`` is negative iff ``ε > n_b / f``.
"""

from __future__ import annotations

import torch

from attacks.poisoning._common import check_benign, mean_std, rows_of

__all__ = ["ipm_updates"]


def ipm_updates(benign: torch.Tensor, *, num_malicious: int, epsilon: float = 0.1) -> torch.Tensor:
    """IPM malicious updates ``−ε·mean(benign)`` (Xie et al., 2019).

    Parameters
    ----------
    benign : torch.Tensor
        ``(n_b, d)`` updates the attackers know (benign updates of the round, or their own).
    num_malicious : int
        Number of malicious updates to return.
    epsilon : float
        ``ε``; the paper uses 0.1 against median/Krum-type rules and large values (e.g. 100) against
        mean-like rules.

    Returns
    -------
    torch.Tensor
        ``(num_malicious, d)``: identical rows.

    >>> ipm_updates(torch.tensor([[1.0, 2.0], [3.0, -2.0]]), num_malicious=1, epsilon=0.5).tolist()
    [[-1.0, -0.0]]
    """
    check_benign(benign, num_malicious=num_malicious)
    mu, _ = mean_std(benign)
    return rows_of(-epsilon * mu, num_malicious, benign)
