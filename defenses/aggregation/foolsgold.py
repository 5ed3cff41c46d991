"""FoolsGold (Fung, Yoon, Beschastnikh, RAID 2020, "The Limitations of Federated Learning in Sybil
Settings")."""

from __future__ import annotations

import torch

from defenses.aggregation._linalg import cosine_similarity, gram, weighted_sum
from defenses.base import AGGREGATORS, AggregationResult, Aggregator
from simulator.context import RoundContext

__all__ = ["FoolsGold", "foolsgold_weights"]


def foolsgold_weights(cs: torch.Tensor, *, kappa: float = 1.0, eps: float = 1e-5) -> torch.Tensor:
    """FoolsGold learning rates ``α_i ∈ [0, 1]`` from the clients' pairwise cosine similarities
    (Fung et al., 2020, Algorithm 1, lines 7–17).

    1. ``v_i = max_j cs_ij`` with the diagonal set to 0 (as ``cs − I`` in the authors' code).
    2. Pardoning: ``cs_ij ← cs_ij · v_i / v_j`` whenever ``v_i < v_j``.
    3. ``α_i = 1 − max_j cs_ij``, clipped to ``[0, 1]``, divided by ``max_i α_i``.
    4. Logit: ``α_i ← κ·(ln(α_i / (1 − α_i)) + 0.5)`` clipped to ``[0, 1]`` (``α_i = 1`` is
       first lowered to ``1 − eps`` so the logit stays finite; ``α_i = 0`` maps to 0).

    If every ``α_i`` is 0 after step 3 (all clients look like sybils of each other) all rates are 0.

    >>> foolsgold_weights(torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])).tolist()
    [0.0, 0.0, 1.0]
    """
    n = cs.shape[0]
    cs = cs.to(torch.float64).clone()
    if n == 1:
        return torch.ones(1, dtype=torch.float64, device=cs.device)
    eye = torch.eye(n, dtype=torch.bool, device=cs.device)
    cs = cs.masked_fill(eye, 0.0)  # the reference code's ``cs − I``: self-similarity counts as 0
    v = cs.max(dim=1).values  # >= 0
    pardon = v[:, None] < v[None, :]  # then v_j > 0
    cs = torch.where(pardon, cs * v[:, None] / v[None, :].clamp_min(1e-300), cs)
    alpha = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    top = alpha.max()
    if float(top) <= 0.0:
        return torch.zeros(n, dtype=torch.float64, device=cs.device)
    alpha = (alpha / top).clamp(max=1.0 - eps)
    zero = alpha <= 0
    logit = kappa * (torch.log(alpha.clamp_min(1e-300) / (1.0 - alpha)) + 0.5)
    return torch.where(zero, torch.zeros_like(alpha), logit.clamp(0.0, 1.0))


@AGGREGATORS.register("foolsgold")
class FoolsGold(Aggregator):
    """FoolsGold (Fung et al., RAID 2020): down-weight clients whose *accumulated* updates point the
    same way (sybils pursuing a shared goal).

    The instance keeps, per client id, the sum of all updates it has sent (the paper's history
    ``H_i``; the instance persists over the run). Each round the cosine similarities of the
    histories of the round's clients give learning rates ``α_i`` (see :func:`foolsgold_weights`) and
    the aggregate is ``Σ α_i Δ_i / Σ α_i`` (a zero update when all ``α_i = 0``; the paper weights by
    ``α_i`` only, not by example counts).

    ``accepted`` = clients with ``α_i > 0``; score = ``1 − α_i`` (higher = more suspicious).

    Deviations: similarities use the whole update vector (the paper's optional restriction to
    "indicative features" of the output layer is not implemented), and histories are kept in
    float32 on the updates' device (memory: one ``d``-vector per client ever seen). With
    all-identical updates every client looks like a sybil and the aggregate is zero, by design.

    Parameters
    ----------
    kappa : float
        κ, the confidence parameter of the logit (the paper uses 1).
    """

    def __init__(self, kappa: float = 1.0) -> None:
        if kappa <= 0:
            raise ValueError("kappa must be > 0")
        self.kappa = kappa
        self.history: dict[int, torch.Tensor] = {}

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext) -> AggregationResult:
        ids = list(ctx.client_ids)
        for i, cid in enumerate(ids):
            prev = self.history.get(cid)
            row = updates[i].detach().to(torch.float32)
            self.history[cid] = row.clone() if prev is None else prev.to(row.device) + row
        hist = torch.stack([self.history[cid] for cid in ids])
        alpha = foolsgold_weights(cosine_similarity(gram(hist)), kappa=self.kappa)
        total = float(alpha.sum())
        if total > 0:
            update = weighted_sum(updates, alpha / total)
        else:
            update = torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device)
        accepted = tuple(cid for cid, a in zip(ids, alpha.tolist()) if a > 0)
        return AggregationResult(update, accepted, {cid: 1.0 - a for cid, a in zip(ids, alpha.tolist())})
