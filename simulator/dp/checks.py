"""Load-time checks of ``[privacy]`` against the rest of the scenario (registered with
:func:`~simulator.scenario.scenario_check`).

Each returns every :class:`~simulator.scenario.loader.Problem` it finds, so a scenario whose sampling
scheme and privacy analysis do not match fails at load time instead of reporting a number that does
not hold.
"""

from __future__ import annotations

import numpy as np

from simulator import audit  # its estimators (scipy.stats) load on first use, not with the scenario checks
from simulator.dp.accounting import client_level_accounting
from simulator.scenario.loader import Problem, scenario_check
from simulator.scenario.schema import Scenario

__all__ = ["privacy_problems"]


def _any_dp(s: Scenario) -> bool:
    c = s.compression.params or {}
    return s.privacy.level != "none" or float(c.get("noise_multiplier", 0) or 0) > 0


def _common(s: Scenario) -> list[Problem]:
    """Settings that void any DP claim, whatever the level."""
    out: list[Problem] = []
    if s.kind == "leakage" and s.privacy.level != "none":
        out.append(
            Problem(
                "privacy.level",
                f"{s.privacy.level!r} in a leakage experiment, which runs no DP "
                f"mechanism and reports no ε; attack a DP payload in a federated run "
                f'(kind = "federated" with [attacks.inversion]), or noise the leakage '
                f'payload with [[defenses.client]] name = "gaussian_noise"',
            )
        )
    ws = s.model.warm_start
    if ws is not None and ws.rounds is not None and _any_dp(s):
        out.append(
            Problem(
                "model.warm_start.rounds",
                f"{ws.rounds} rounds of non-private FedAvg on the same clients' data come before the DP "
                f"run, so no finite ε holds for those clients; drop [model.warm_start], or use "
                f"warm_start.checkpoint with a model trained on data disjoint from the clients'",
            )
        )
    return out


def _client_level(s: Scenario) -> list[Problem]:
    p, f = s.privacy, s.federation
    out: list[Problem] = []
    if p.client.adaptive_clipping is not None and p.client.noise == "local":
        out.append(
            Problem(
                "privacy.client.adaptive_clipping",
                'with noise = "local" the server is not trusted, but adaptive clipping sends each '
                'client\'s clip bit to it without noise (an unaccounted release); use noise = "central" '
                "or a fixed clip_norm (remove [privacy.client.adaptive_clipping])",
            )
        )
    if f.min_replies > 1:
        out.append(
            Problem(
                "federation.min_replies",
                f"{f.min_replies} with client-level DP: skipping a round with fewer replies would "
                f"reveal, without noise, how many clients answered; DP-FedAvg releases its noisy sum "
                f"whatever the count (fixed denominator m); allowed: 0 or 1",
            )
        )
    if p.target_epsilon is not None and p.on_budget == "calibrate":
        if p.client.noise == "local":
            out.append(
                Problem(
                    "privacy.on_budget",
                    "calibrate targets the aggregate view, but with noise = "
                    '"local" the server reads each update (a larger ε); set '
                    "privacy.client.noise_multiplier instead",
                )
            )
        if s.attacks.inversion is not None:
            out.append(
                Problem(
                    "privacy.on_budget",
                    "calibrate targets the aggregate view, but the in-run "
                    "inversion server reads updates (a larger ε); set "
                    "privacy.client.noise_multiplier instead",
                )
            )
    if s.defenses.aggregator.name != "fedavg":
        out.append(
            Problem(
                "defenses.aggregator.name",
                f"client-level DP accounts the noisy sum of clipped updates (DP-FedAvg); aggregator "
                f"{s.defenses.aggregator.name!r} changes the sensitivity; use 'fedavg'",
            )
        )
    if s.compression.name != "none":
        out.append(
            Problem(
                "compression.name",
                f"client-level DP needs the decoded updates to keep norm ≤ C; "
                f"compressor {s.compression.name!r} does not guarantee it",
            )
        )
    if p.amplification and f.sampling == "fixed" and p.accountant == "pld":
        out.append(
            Problem(
                "privacy.accountant",
                'federation.sampling = "fixed" draws cohorts without replacement, which dp-accounting\'s '
                'PLD accountant cannot analyse; use federation.sampling = "poisson" (with sampling_rate), '
                'or privacy.accountant = "rdp" (replace-one neighbouring), or '
                "privacy.amplification = false (no subsampling amplification)",
            )
        )
    ad = p.client.adaptive_clipping
    if ad is not None and not (p.target_epsilon is not None and p.on_budget == "calibrate"):
        sb = ad.clipped_count_stddev if ad.clipped_count_stddev is not None else s.num_sampled_expected / 20.0
        if sb <= p.client.noise_multiplier / 2:
            out.append(
                Problem(
                    "privacy.client.adaptive_clipping.clipped_count_stddev",
                    f"σ_b = {sb:g} must exceed noise_multiplier/2 = {p.client.noise_multiplier / 2:g} "
                    f"(Andrew et al. 2021, Thm 1: the update noise is (z⁻² − (2σ_b)⁻²)^(−1/2))",
                )
            )
    if p.target_epsilon is not None and p.on_budget == "stop" and not out:
        e1 = client_level_accounting(s).epsilon(1)
        if e1 > p.target_epsilon:
            out.append(
                Problem(
                    "privacy.target_epsilon",
                    f"one round already costs ε = {e1:.3g} > target "
                    f"{p.target_epsilon:g}; raise noise_multiplier or use "
                    f'on_budget = "calibrate"',
                )
            )
    return out


def _record_level(s: Scenario) -> list[Problem]:
    r, out = s.privacy.record, []
    if r.mechanism == "gradient" and not r.poisson_sampling:
        out.append(
            Problem(
                "privacy.record.poisson_sampling",
                "false (shuffled fixed batches): adding or removing a record moves every batch boundary, "
                'so "one Gaussian per epoch" is not an add-or-remove-one analysis privsim can stand '
                "behind; use poisson_sampling = true (Opacus's sampled Gaussian)",
            )
        )
    if r.feature_preprocessing == "dpsgd_f":
        if r.mechanism != "gradient":
            out.append(
                Problem(
                    "privacy.record.feature_preprocessing",
                    'DPSGD-F precedes DP-SGD; it needs mechanism = "gradient"',
                )
            )
        if s.model.name not in ("mlp", "cnn"):
            out.append(
                Problem(
                    "privacy.record.feature_preprocessing",
                    "DPSGD-F maps the first nn.Linear (mlp) or nn.Conv2d (cnn) layer; "
                    f"model {s.model.name!r} is neither",
                )
            )
        if s.privacy.target_epsilon is not None and s.privacy.on_budget == "calibrate":
            out.append(
                Problem(
                    "privacy.on_budget",
                    "calibration does not include the DPSGD-F preprocessing cost; "
                    'use on_budget = "stop" or set noise_multiplier',
                )
            )
    if not s.privacy.amplification:
        out.append(
            Problem(
                "privacy.amplification",
                "only client-level accounting uses client sampling; "
                "record-level DP-SGD accounts its local batches itself",
            )
        )
    return out


def max_audit_epsilon(canaries: int, *, confidence: float, delta: float) -> float:
    """The largest one-run ε̂ that ``canaries`` canaries can give at all (perfectly separated scores)."""
    half = canaries // 2
    return audit.one_run_epsilon_lower_bound(
        np.ones(canaries - half), np.zeros(half), delta=delta, confidence=confidence
    ).epsilon_lower


def _audit(s: Scenario) -> list[Problem]:
    a = s.audit
    if a is None:
        return []
    out: list[Problem] = []
    if s.kind != "federated":
        return [Problem("audit", 'an audit inserts canaries into a federated run; kind = "leakage" has none')]
    p = s.privacy
    if a.level == "client":
        if p.level == "record":
            out.append(
                Problem(
                    "audit.level",
                    '"client" canaries audit client-level DP or plain FL; with '
                    'privacy.level = "record" use audit.level = "record"',
                )
            )
        if p.level == "client" and p.client.noise != "central":
            out.append(
                Problem(
                    "audit.level",
                    "canary clients add no local noise of their own; with "
                    'privacy.client.noise = "local" the audit would see less noise than '
                    'the mechanism; use noise = "central"',
                )
            )
        if s.compression.name != "none":
            out.append(
                Problem(
                    "audit.level",
                    f"canary clients join the per-client updates before aggregation; "
                    f"compressor {s.compression.name!r} aggregates payloads, not updates; "
                    f'use compression.name = "none"',
                )
            )
    elif p.level == "client":
        out.append(
            Problem(
                "audit.level",
                '"record" canaries audit record-level DP or plain FL; with '
                'privacy.level = "client" use audit.level = "client"',
            )
        )
    if not out:
        best = max_audit_epsilon(a.canaries, confidence=a.confidence, delta=p.delta)
        if best < 0.5:
            out.append(
                Problem(
                    "audit.canaries",
                    f"{a.canaries}: even perfectly separated scores give at most "
                    f"ε̂ = {best:.2g} at confidence {a.confidence} (δ = {p.delta:g}); "
                    f"use more canaries (e.g. 1000) or a lower confidence",
                )
            )
    return out


@scenario_check
def privacy_problems(s: Scenario) -> list[Problem]:
    """Every mismatch between ``[privacy]`` / ``[audit]`` and the scenario's sampling,
    aggregator and model."""
    common = _common(s) + _audit(s)
    if s.privacy.level == "client":
        return common + _client_level(s)
    if s.privacy.level == "record":
        out = common + _record_level(s)
        if (
            s.federation.mixup_alpha > 0
        ):  # a mixed example holds two records: per-example clipping no longer bounds one
            out.append(
                Problem(
                    "federation.mixup_alpha",
                    f"{s.federation.mixup_alpha} with record-level DP: a mixup "
                    "example mixes two records, which DP-SGD's per-example "
                    "sensitivity does not cover; allowed: 0",
                )
            )
        return out
    return common
