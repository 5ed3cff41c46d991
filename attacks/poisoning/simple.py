"""Naive untargeted model poisoning: sign flipping and Gaussian noise.

Both are the usual baselines of the Byzantine-robust aggregation literature, e.g. Blanchard, El Mhamdi,
Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS
2017 (Gaussian Byzantine vectors), Li, Xu, Chen, Giannakis, Ling, "RSA: Byzantine-Robust Stochastic
Aggregation Methods for Distributed Learning from Heterogeneous Datasets", AAAI 2019 (sign flipping),
and the benchmarks built on them (Blades, FLPoison).

Every function takes ``benign``, the ``(n_b, d)`` updates the attackers know: the benign updates of
the round (omniscient attacker) or the attackers' own honestly computed updates (partial knowledge).
The function is the same either way; the caller chooses the input. It returns the ``(num_malicious, d)``
malicious updates in ``benign``'s dtype and device.
"""

from __future__ import annotations

import torch

from attacks.poisoning._common import check_benign, mean_std, rows_of

__all__ = ["gaussian_noise", "sign_flip"]


def sign_flip(
    benign: torch.Tensor, *, num_malicious: int, scale: float = 1.0, per_attacker: bool = False
) -> torch.Tensor:
    """Sign flipping: send the negated (and scaled) update.

    Parameters
    ----------
    benign : torch.Tensor
        ``(n_b, d)`` updates the attackers know.
    num_malicious : int
        Number of malicious updates to return.
    scale : float
        ``s`` in ``−s·g`` (1 = plain sign flip; larger values also inflate the norm).
    per_attacker : bool
        ``False``: every attacker sends ``−s·mean(benign)``. ``True``: attacker ``i`` sends
        ``−s·benign[i]``, its own honestly computed update; ``benign`` must then hold exactly
        ``num_malicious`` rows.

    Returns
    -------
    torch.Tensor
        ``(num_malicious, d)`` malicious updates.

    >>> sign_flip(torch.tensor([[1.0, -2.0], [3.0, 0.0]]), num_malicious=2).tolist()
    [[-2.0, 1.0], [-2.0, 1.0]]
    """
    check_benign(benign, num_malicious=num_malicious)
    if per_attacker:
        if benign.shape[0] != num_malicious:
            raise ValueError(
                f"per_attacker=True needs one own update per attacker: got {benign.shape[0]} "
                f"rows for num_malicious={num_malicious}"
            )
        return (benign.to(torch.float64) * -scale).to(benign.dtype)
    mu, _ = mean_std(benign)
    return rows_of(-scale * mu, num_malicious, benign)


def gaussian_noise(
    benign: torch.Tensor,
    *,
    num_malicious: int,
    mean: float | torch.Tensor = 0.0,
    std: float | torch.Tensor = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gaussian Byzantine updates: i.i.d. ``N(μ, σ²)`` coordinates.

    ``benign`` only fixes ``d``, the dtype and the device; its values are not used (pass e.g. the
    benign mean and standard deviation as ``mean``/``std`` for the "noise around the mean" variant).

    Parameters
    ----------
    benign : torch.Tensor
        ``(n_b, d)`` updates the attackers know.
    num_malicious : int
        Number of malicious updates to return.
    mean, std : float | torch.Tensor
        ``μ`` and ``σ``: scalars or tensors broadcastable to ``(d,)``; ``σ ≥ 0``.
    generator : torch.Generator | None
        Source of randomness (seeded by the caller); ``None`` uses torch's global generator.

    Returns
    -------
    torch.Tensor
        ``(num_malicious, d)`` samples, drawn in float64 on the generator's device and then cast.
    """
    check_benign(benign, num_malicious=num_malicious)
    d = benign.shape[1]
    dev = generator.device if generator is not None else torch.device("cpu")
    mu = torch.as_tensor(mean, dtype=torch.float64, device=dev)
    sd = torch.as_tensor(std, dtype=torch.float64, device=dev)
    if bool((sd < 0).any()):
        raise ValueError("std must be >= 0")
    z = torch.randn(num_malicious, d, generator=generator, dtype=torch.float64, device=dev)
    return (mu + sd * z).to(device=benign.device, dtype=benign.dtype)
