"""Steps 1-6 for every client a process plays in a round, with the plain ones trained as one vectorised
computation (:mod:`simulator.vectorised`).

A client trains vectorised when its training is the plain local recipe: no attack acting this round, a
privacy mechanism that does not take over training (record-level DP-SGD and input perturbation run per
client), no client defense that needs the client's data, and a model / optimizer the vectorised step
reproduces (:func:`simulator.vectorised.why_not_vectorised`). Everyone else runs :func:`client_step` on its
own, in the same round. Model inspection (step 1) runs for every client before any training, and steps 3-6
are :func:`simulator.round.client_step.finish_client` for both paths, so the two paths differ only in how the
weights were trained.

``vectorise``: ``"off"`` always per client; ``"on"`` vectorise every eligible group of two or more;
``"auto"`` vectorise when :func:`simulator.vectorised.pays_off` measured that it pays for this model,
data shape, batch size and cohort size (cached on disk, so a scenario takes the same path on every run).
``kernels``: the vectorised step's weight layers (:func:`simulator.vectorised.resolve_kernels`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from simulator.context import ClientContext
from simulator.dp.mechanism import PrivacyMechanism
from simulator.flat import load_vector
from simulator.round.client_step import (
    ClientPlugins,
    ClientReply,
    ModelRefused,
    client_step,
    finish_client,
    inspect_model,
)
from simulator.vectorised import CohortMember, Kernels, pays_off, train_cohort_flat, why_not_vectorised

__all__ = ["ClientJob", "CohortReport", "cohort_step", "plain_training"]

Vectorise = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class ClientJob:
    """One client's inputs to the client step."""

    x: torch.Tensor
    y: torch.Tensor
    ctx: ClientContext
    plugins: ClientPlugins
    config: Mapping[str, Any]


@dataclass
class CohortReport:
    """How the cohort was trained (for the round record and the benchmarks)."""

    vectorised: int = 0  # clients trained in the vectorised computation
    per_client: int = 0  # clients trained one by one


def plain_training(job: ClientJob) -> bool:
    """Whether this client's training is the plain local recipe the vectorised step reproduces (the model and
    optimizer are checked separately)."""
    p = job.plugins
    return (
        p.attack is None
        and type(p.privacy).client_train is PrivacyMechanism.client_train
        and not any(d.needs_client_data for d in p.defenses)
    )


def cohort_step(
    model: nn.Module,
    jobs: Sequence[ClientJob],
    *,
    vectorise: Vectorise = "auto",
    kernels: Kernels = "auto",
    report: CohortReport | None = None,
) -> list[ClientReply | BaseException]:
    """Steps 1-6 for each job, in order; a client's failure (a refused model, an exception in its plug-ins) is
    returned in its place instead of failing the others. ``model`` holds the round's global model on entry
    (every job's ``ctx.global_vector``) and holds it again on return."""
    report = report if report is not None else CohortReport()
    out: list[ClientReply | BaseException | None] = [None] * len(jobs)
    together: list[int] = []
    if vectorise != "off" and len(jobs) >= 2:
        cfgs = {j.ctx.train for j in jobs}
        plain = [i for i, j in enumerate(jobs) if plain_training(j)]
        train = jobs[0].ctx.train
        if len(cfgs) == 1 and len(plain) >= 2 and why_not_vectorised(model, train, kernels) is None:
            ok = vectorise == "on" or pays_off(model, jobs[plain[0]].x, train, len(plain), kernels)
            together = plain if ok else []
    if together:
        members, keep = [], []
        for i in together:
            job = jobs[i]
            why = inspect_model(job.plugins.defenses, model, job.ctx)
            if why:
                out[i] = ModelRefused(f"client {job.ctx.partition_id} refused the model: {why}")
                continue
            members.append(CohortMember(job.x, job.y, job.ctx.generator("train")))
            keep.append(i)
        if keep:
            flat, stats = train_cohort_flat(
                model, members, jobs[keep[0]].ctx.train, jobs[keep[0]].ctx.layout, kernels
            )
            for row, (i, st) in enumerate(zip(keep, stats)):
                job = jobs[i]
                try:
                    out[i] = finish_client(flat[row], st, {}, job.ctx, job.plugins, dict(job.config))
                except Exception as e:
                    out[i] = e
        report.vectorised += len(keep)
    global_vector = jobs[0].ctx.global_vector if jobs else None
    for i, job in enumerate(jobs):
        if out[i] is not None:
            continue
        assert global_vector is not None
        load_vector(model, job.ctx.global_vector, job.ctx.layout)
        try:
            out[i] = client_step(model, job.x, job.y, job.ctx, job.plugins, config=job.config)
        except Exception as e:
            out[i] = e
        report.per_client += 1
    if global_vector is not None and report.per_client:
        load_vector(model, global_vector, jobs[0].ctx.layout)
    done = [r for r in out if r is not None]
    assert len(done) == len(jobs)
    return done
