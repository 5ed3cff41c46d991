"""The privacy mechanism seam: how a scenario's ``[privacy]`` section acts on a run.

The federated runtime calls these hooks at fixed points of the round (see DESIGN.md):

* server, before sampling: :meth:`PrivacyMechanism.server_config` adds entries to the round's
  train config (``"dp-clip-norm"``: the current client-level clip norm);
* client, step 2: :meth:`client_train` trains locally (DP-SGD) or returns None for plain SGD;
* client, step 5 (before the client defenses): :meth:`client_update` clips / noises the update
  and may add metrics (the unclipped bit for adaptive clipping, the update norm);
* server, step 11: :meth:`server_aggregate` adds central noise and updates its state;
* server, step 13: :meth:`round_report` gives the ε/δ entries of the round record, and
  :meth:`budget_exhausted` stops training when ``target_epsilon`` is spent;
* :meth:`summary` is the ``privacy`` block of summary.json.

Client metric keys (sent in the reply's MetricRecord):

* record level: ``epsilon`` (the client's cumulative record-level ε from Opacus, unchanged),
  ``dp-noise-multiplier``, ``dp-sample-rate``, ``dp-steps`` and, with ``target_epsilon``/``on_budget="stop"``,
  ``epsilon-next`` (ε if the client takes part once more with the same steps);
  ``dp-rows``: this round's new releases as flat ``(z, q, steps)`` triples, for the server's ledger;
* client level with adaptive clipping only: ``dp-clip-bit`` (``+½`` when ‖Δ‖ ≤ C, else ``−½``: TF Privacy's
  shifted bit, sensitivity ½). No other per-client value (no norm, no unshifted bit) leaves the client.

Every ε comes from the run's :class:`~simulator.dp.ledger.PrivacyLedger` (one dp-accounting event per release,
per server view); privacy noise and secret sampling draw from :func:`simulator.context.run_secret`, never from
the scenario seed.

Client level assumes the aggregate handed to :meth:`server_aggregate` is the **uniform** mean of the
received (clipped) updates: :attr:`PrivacyMechanism.uniform_weights` is True and the runtime must then
aggregate with equal weights. The mechanism turns that mean back into the sum, adds noise and divides by the
fixed expected cohort size ``m = q·N`` (McMahan et al. 2018); the reported ε is for that estimator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from simulator.context import ClientContext, RoundContext, derive_seed, private_generator
from simulator.dp.accounting import ClientLevelAccounting, calibrate_noise_multiplier, epsilon_pld
from simulator.dp.client_level import (
    AdaptiveClipState,
    clip_update,
    local_noise_std,
    noisy_sum_average,
    update_noise_multiplier,
)
from simulator.dp.dpa import E
from simulator.dp.dpsgd import opacus_epsilon, train_dpsgd
from simulator.dp.dpsgd_f import (
    FeatureTransform,
    private_feature_transform,
    to_raw_space,
    to_transformed_space,
)
from simulator.dp.input_perturbation import input_perturbation_epsilon, perturb_inputs
from simulator.dp.ledger import PrivacyLedger, gaussian, gaussian_multiplier, sampled
from simulator.training import TrainHooks, TrainStats, train_local

__all__ = ["ClientLevelDP", "NoPrivacy", "PrivacyMechanism", "RecordLevelDP"]

HISTORY_KEY = "dp-history"


class PrivacyMechanism:
    """No-op base: every hook leaves the run unchanged."""

    #: True when the ε assumes the aggregate passed to :meth:`server_aggregate` is an unweighted mean.
    uniform_weights: bool = False
    #: True when a round must release its (noisy) aggregate even with no valid reply: skipping the round would
    #: reveal, without noise, that too few clients answered.
    releases_without_replies: bool = False
    #: True when the ε counts on client-sampling amplification: the cohort must then be drawn from the privacy
    #: secret, not from the scenario seed that anyone holding the scenario knows.
    secret_sampling: bool = False
    #: the run's releases as dp-accounting events (None: this mechanism claims no ε)
    ledger: PrivacyLedger | None = None

    def server_config(self, server_round: int) -> dict[str, float | int | str]:
        return {}

    def client_train(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        ctx: ClientContext,
        config: dict[str, Any],
        hooks: TrainHooks | None,
    ) -> tuple[TrainStats, dict[str, float]] | None:
        return None

    def client_update(
        self, delta: torch.Tensor, ctx: ClientContext, config: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return delta, {}

    def server_aggregate(
        self, update: torch.Tensor, client_metrics: list[dict[str, float]], ctx: RoundContext
    ) -> torch.Tensor:
        return update

    def round_report(self, server_round: int, client_metrics: list[dict[str, float]]) -> dict[str, float]:
        return {}

    def budget_exhausted(self) -> bool:
        return False

    def summary(self) -> dict[str, Any] | None:
        return None

    def epsilon_of_view(self, view: str) -> float:
        """ε of one ledger view (an audit's upper bound); ∞ without DP or without that view."""
        if self.ledger is None or view not in self.ledger.views:
            return math.inf
        return float(self.ledger.epsilon(view))

    def delta_of_run(self, default: float) -> float:
        return float(self.ledger.delta) if self.ledger is not None else default


class NoPrivacy(PrivacyMechanism):
    """No differential privacy."""


# ---------------------------------------------------------------------------------------------------
# RECORD LEVEL (inside each client)
# ---------------------------------------------------------------------------------------------------
class RecordLevelDP(PrivacyMechanism):
    """Record-level DP in every client: Opacus DP-SGD (optionally after DPSGD-F) or input perturbation.

    The run reports the worst client's cumulative record-level ε. This is *not* user-level DP.

    Parameters
    ----------
    cfg:
        The scenario's ``[privacy.record]`` section.
    delta:
        δ of the record-level ε.
    rounds:
        Planned rounds (``on_budget = "calibrate"`` assumes a client may take part in all of them).
    target_epsilon, on_budget:
        The budget and what to do about it.
    """

    ledger: PrivacyLedger  # always present: this mechanism claims an ε

    def __init__(
        self,
        cfg: Any,
        *,
        delta: float,
        rounds: int,
        target_epsilon: float | None = None,
        on_budget: str = "stop",
        randomness: str = "fresh OS entropy",
    ) -> None:
        self.cfg, self.delta, self.rounds = cfg, delta, rounds
        self.target_epsilon, self.on_budget = target_epsilon, on_budget
        self.randomness = randomness
        self._z_cache: dict[tuple[int, int, int | None, int], float] = {}
        self.ledger = PrivacyLedger(delta=delta)
        self.ledger.add_view(
            "records",
            "one record of a client: every DP-SGD step (and DPSGD-F release) that client ran, composed; "
            "the worst client"
            if cfg.mechanism == "gradient"
            else "one example's features (replace-one; labels are released as is): "
            "the client's one noisy copy",
            relation="add_or_remove_one" if cfg.mechanism == "gradient" else "replace_one",
            per_subject=True,
        )
        self.worst_opacus = 0.0
        self.worst_epsilon = 0.0
        self.worst_metrics: dict[str, float] = {}
        self._exhausted = False
        self.rounds_done = 0

    # ---- noise multiplier (fixed or calibrated per local dataset size) ----
    def noise_multiplier(self, n: int, ctx: ClientContext) -> float:
        if self.target_epsilon is None or self.on_budget != "calibrate":
            return self.cfg.noise_multiplier
        t = ctx.train
        key = (n, t.batch_size, t.max_steps, t.epochs)
        if key not in self._z_cache:
            if self.cfg.mechanism == "input":
                make = _gaussian_accounting(self.delta)
                self._z_cache[key] = calibrate_noise_multiplier(
                    target_epsilon=self.target_epsilon, rounds=1, make=make
                )
            else:
                # deferred: Opacus loads only when a record-level noise multiplier is calibrated
                from opacus.accountants.utils import get_noise_multiplier

                per_epoch = math.ceil(n / t.batch_size)
                steps = (
                    t.epochs * per_epoch if t.max_steps is None else min(t.max_steps, t.epochs * per_epoch)
                )
                q, count = (1.0 / per_epoch, steps) if self.cfg.poisson_sampling else (1.0, t.epochs)
                self._z_cache[key] = float(
                    get_noise_multiplier(
                        target_epsilon=self.target_epsilon,
                        target_delta=self.delta,
                        sample_rate=q,
                        steps=count * self.rounds,
                        accountant=self.cfg.accountant,
                    )
                )
        return self._z_cache[key]

    # ---- CLIENT SIDE ----
    def client_train(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        ctx: ClientContext,
        config: dict[str, Any],
        hooks: TrainHooks | None,
    ) -> tuple[TrainStats, dict[str, Any]] | None:
        if hooks is not None:
            return None  # an attacker with training hooks deviates from the protocol: plain SGD, no ε claimed
        z = self.noise_multiplier(int(x.shape[0]), ctx)
        if self.cfg.mechanism == "input":
            # one release per client and run: the noisy copy is kept in the client's state and re-used
            rows: list[tuple[float, float, int]] = []
            if INPUT_KEY in ctx.state and ctx.state[INPUT_KEY].shape == tuple(x.shape):
                xn = torch.as_tensor(ctx.state[INPUT_KEY]).to(x.dtype)
            else:
                xn = perturb_inputs(
                    x,
                    bound=self.cfg.feature_clip_norm,
                    noise_multiplier=z,
                    generator=ctx.private_generator("dp-input-perturbation"),
                )
                ctx.state[INPUT_KEY] = xn.detach().cpu().numpy()
                rows = [(float(z), 1.0, 1)]
            stats = train_local(model, xn, y, ctx.train, generator=ctx.generator("train"))
            eps = input_perturbation_epsilon(z, self.delta)
            return stats, {"epsilon": eps, "dp-noise-multiplier": z, "dp-rows": _flat_rows(rows)}
        history = [tuple(r) for r in np.asarray(ctx.state.get(HISTORY_KEY, np.zeros((0, 3)))).tolist()]
        new_rows: list[tuple[float, float, int]] = []
        transform = None
        if self.cfg.feature_preprocessing == "dpsgd_f":
            transform = FeatureTransform.from_state(ctx.state)
            if transform is None:  # paid once per client and run
                transform, pre_rows = private_feature_transform(
                    x,
                    bound=self.cfg.feature_clip_norm,
                    noise_multiplier=self.cfg.preprocessing_noise_multiplier,
                    quantile=self.cfg.preprocessing_quantile,
                    generator=ctx.private_generator("dpsgdf"),
                )
                history += pre_rows
                new_rows += pre_rows
                ctx.state.update(transform.to_state())
            x = transform.apply(x)
            to_transformed_space(model, transform)
        res = train_dpsgd(
            model,
            x,
            y,
            ctx.train,
            noise_multiplier=z,
            max_grad_norm=self.cfg.max_grad_norm,
            delta=self.delta,
            generator=ctx.private_generator("dp-batches"),
            noise_generator=ctx.private_generator("dp-noise"),
            clipping=self.cfg.clipping,
            grad_sample_mode=self.cfg.grad_sample_mode,
            poisson_sampling=self.cfg.poisson_sampling,
            accountant=self.cfg.accountant,
            history=history,
        )
        if transform is not None:
            to_raw_space(model, transform)
        ctx.state[HISTORY_KEY] = np.asarray(res.history, dtype=np.float64).reshape(-1, 3)
        metrics: dict[str, Any] = {
            "epsilon": res.epsilon,
            "dp-noise-multiplier": z,
            "dp-sample-rate": res.sample_rate,
            "dp-steps": float(res.stats.steps),
            "dp-rows": _flat_rows(new_rows + list(res.rows)),
        }
        if self.target_epsilon is not None and self.on_budget == "stop":
            metrics["epsilon-next"] = opacus_epsilon(
                res.history + res.rows, accountant=self.cfg.accountant, delta=self.delta
            )
        return res.stats, metrics

    # ---- SERVER SIDE ----
    def round_report(self, server_round: int, client_metrics: list[dict[str, Any]]) -> dict[str, float]:
        self.rounds_done += 1
        for m in client_metrics:  # each client's new releases this round, into its own ledger list
            pid = int(m.get("partition-id", -1))
            for z, q, steps in _rows_of(m.get("dp-rows", [])):
                self.ledger.record(
                    "records",
                    _row_event(z, q, steps),
                    round=server_round,
                    subject=pid,
                    what="input perturbation (one noisy copy of the features)"
                    if self.cfg.mechanism == "input"
                    else f"DP-SGD: {steps} steps, q = {q:.4g}",
                )
        eps = [float(m["epsilon"]) for m in client_metrics if "epsilon" in m]
        out: dict[str, float] = {"delta": self.delta}
        if eps:
            i = int(np.argmax(eps))
            if eps[i] >= self.worst_opacus:
                self.worst_opacus, self.worst_metrics = eps[i], dict(client_metrics[i])
        self.worst_epsilon = self.ledger.epsilon("records")
        out["epsilon"] = self.worst_epsilon
        if self.cfg.mechanism == "gradient":
            out["epsilon_opacus"] = self.worst_opacus
        if self.target_epsilon is not None and self.on_budget == "stop":
            nxt = [float(m["epsilon-next"]) for m in client_metrics if "epsilon-next" in m]
            if max(self.worst_epsilon, self.worst_opacus) > self.target_epsilon or (
                nxt and max(nxt) > self.target_epsilon
            ):
                self._exhausted = True
        return out

    def budget_exhausted(self) -> bool:
        return self._exhausted

    def summary(self) -> dict[str, Any]:
        c = self.cfg
        block: dict[str, Any] = {
            "level": "record",
            "mechanism": c.mechanism,
            "epsilon": self.worst_epsilon,
            "delta": self.delta,
            "epsilon_view": "records",
            "epsilon_is": "the worst client's cumulative record-level ε from the ledger (not user-level DP)",
            "noise_multiplier": self.worst_metrics.get("dp-noise-multiplier", c.noise_multiplier),
            "neighboring_relation": "add_or_remove_one"
            if c.mechanism == "gradient"
            else "replace_one_features",
            "rounds": self.rounds_done,
            "target_epsilon": self.target_epsilon,
            "on_budget": self.on_budget,
            "noise_randomness": self.randomness,
            "ledger": self.ledger.to_dict(),
        }
        if c.mechanism == "gradient":
            block.update(
                accountant="dp-accounting (ledger)",
                epsilon_opacus=self.worst_opacus,
                opacus_accountant=c.accountant,
                max_grad_norm=c.max_grad_norm,
                clipping=c.clipping,
                grad_sample_mode=c.grad_sample_mode,
                sampling="poisson (local batches)"
                if c.poisson_sampling
                else "shuffled fixed batches, no amplification (z, q=1, one step per epoch)",
                sampling_rate=self.worst_metrics.get("dp-sample-rate"),
                steps=self.worst_metrics.get("dp-steps"),
                feature_preprocessing=c.feature_preprocessing,
            )
            if c.feature_preprocessing == "dpsgd_f":
                block["preprocessing_noise_multiplier"] = c.preprocessing_noise_multiplier
        else:
            block.update(
                accountant="pld",
                sampling="none (one release of the noisy features)",
                steps=1,
                sampling_rate=1.0,
                feature_clip_norm=c.feature_clip_norm,
                labels="not protected (released as is)",
            )
        return block


INPUT_KEY = "dp-input-noisy"


def _flat_rows(rows: list[tuple[float, float, int]]) -> list[float]:
    return [float(v) for r in rows for v in r]


def _rows_of(flat: Any) -> list[tuple[float, float, int]]:
    vals = [float(v) for v in (flat if isinstance(flat, (list, tuple)) else [])]
    return [(vals[i], vals[i + 1], round(vals[i + 2])) for i in range(0, len(vals) - 2, 3)]


def _row_event(z: float, q: float, steps: int) -> E.DpEvent:
    """One Opacus accountant row ``(z, q, steps)`` as a dp-accounting event."""
    one: E.DpEvent = E.GaussianDpEvent(z) if q >= 1.0 else E.PoissonSampledDpEvent(q, E.GaussianDpEvent(z))
    return one if steps == 1 else E.SelfComposedDpEvent(one, steps)


def _gaussian_accounting(delta: float) -> Any:
    class _One:
        def __init__(self, z: float) -> None:
            self.z = z

        def epsilon(self, rounds: int) -> float:
            return epsilon_pld(E.GaussianDpEvent(self.z), rounds, delta)

    return _One


# ---------------------------------------------------------------------------------------------------
# CLIENT LEVEL (DP-FedAvg)
# ---------------------------------------------------------------------------------------------------
class ClientLevelDP(PrivacyMechanism):
    """DP-FedAvg with fixed or adaptive clipping and central or local ("distributed") Gaussian noise.

    * ``central``: clients clip; the (trusted) server adds ``N(0, (z_Δ·C)²)`` to the sum of the received
      clipped updates and divides by ``m``; the noise std on the average is ``z_Δ·C/m``.
    * ``local``: each client adds ``N(0, (z_Δ·C)²/m)`` to its clipped update, so ``m`` clients' noise sums to
      the central noise; when fewer than ``m`` replies arrive the server tops the sum's noise up to
      ``(z_Δ·C)²``. Without secure aggregation the server reads every noisy update: the ``update_in_clear``
      view (local DP, replace-one, multiplier ``z_Δ/(2√m)`` per round the client took part, no amplification)
      is the headline.

    Adaptive clipping (Andrew et al., NeurIPS 2021) as TF Privacy's quantile estimator runs it: each client
    sends the shifted bit ``b_i − ½ ∈ {−½, +½}`` (sensitivity ½), the server adds ``N(0, σ_b²)`` to their sum,
    so the pair (update sum, bit sum) is one Gaussian release with multiplier
    ``(z_Δ⁻² + (2σ_b)⁻²)^(−1/2) = z`` when ``z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)`` (their Theorem 1). The ledger
    computes every round's multiplier from the noise stds that ran and the sensitivities (``C``, ``½``;
    doubled under replace-one), not from this formula.

    Views (see :mod:`simulator.dp.ledger`): ``aggregate`` (the released noisy sums, with the sampling's
    amplification); ``forced_target`` (clients the server forces into rounds: those rounds are not amplified);
    ``update_in_clear`` (local noise: each noisy update; central noise with a curious in-run server: the
    clipped update before the noise, a non-private release).
    """

    ledger: PrivacyLedger  # always present: this mechanism claims an ε

    uniform_weights = True
    releases_without_replies = True  # the noisy sum is released whatever the count (a skip would reveal it)
    secret_sampling = True

    def __init__(
        self,
        cfg: Any,
        plan: ClientLevelAccounting,
        *,
        expected_clients: float,
        target_epsilon: float | None = None,
        on_budget: str = "stop",
        forced: Mapping[int, tuple[int, ...]] | None = None,
        observed_rounds: tuple[int, ...] = (),
        secret: int | None = None,
        randomness: str = "fresh OS entropy",
        secure_aggregation: bool = False,
        sensitivity_slack: float = 0.0,
    ) -> None:
        self.cfg, self.plan, self.m = cfg, plan, float(expected_clients)
        self.secure_aggregation = secure_aggregation
        self.sensitivity_slack = float(sensitivity_slack)
        self.target_epsilon, self.on_budget = target_epsilon, on_budget
        self.forced = dict(forced or {})
        self.observed_rounds = tuple(observed_rounds)
        self.server_key = None if secret is None else derive_seed(secret, "server")
        self.randomness = randomness
        z = plan.noise_multiplier
        ad = cfg.adaptive_clipping
        self.adaptive: AdaptiveClipState | None = None
        count_std = None
        if ad is not None:
            count_std = ad.clipped_count_stddev if ad.clipped_count_stddev is not None else self.m / 20.0
            self.adaptive = AdaptiveClipState(cfg.clip_norm, ad.target_quantile, ad.clip_norm_lr, count_std)
        self.count_stddev = count_std
        self.update_z = update_noise_multiplier(z, count_std)
        self.clip_norm = cfg.clip_norm
        self.rounds_done = 0
        self.clip_history: list[float] = []
        self.noisy_fraction: float | None = None
        self.ledger = self._make_ledger(plan.delta)

    # ---- the ledger's views ----
    @property
    def replace_one(self) -> bool:
        return self.plan.sampling == "fixed"

    def _make_ledger(self, delta: float) -> PrivacyLedger:
        led = PrivacyLedger(delta=delta)
        rel = "replace_one" if self.replace_one else "add_or_remove_one"
        sampling = {
            "poisson": f"Poisson client sampling (q = {self.plan.sampling_rate:.4g})",
            "fixed": f"{self.plan.sample_size} of {self.plan.num_clients} clients without replacement",
            "none": "no amplification",
        }[self.plan.sampling]
        if self.cfg.noise == "central":
            led.add_view("aggregate", f"the released noisy sums, {sampling}", relation=rel)
        elif self.secure_aggregation:  # the server holds the sum of the noisy updates alone
            led.add_view(
                "aggregate",
                f"the secure sum of the noisy updates (SecAgg+), {sampling}; no update is seen in the clear",
                relation=rel,
            )
        else:
            led.add_view(
                "aggregate",
                f"the sum of the noisy updates, {sampling}: holds only if the server sees the "
                f"sum alone (secure aggregation), which this run does not simulate",
                relation=rel,
            )
            led.add_view(
                "update_in_clear",
                "each client's noisy update read by the server (local DP, replace-one: "
                "sensitivity 2C; no amplification, the server knows who replied)",
                relation="replace_one",
                per_subject=True,
            )
        if self.forced and self.plan.sampling != "none":
            led.add_view(
                "forced_target",
                "a client the server forces into rounds (attacks.inversion.force_sampled): "
                "no sampling amplification in those rounds",
                relation=rel,
                per_subject=True,
            )
        if self.observed_rounds and self.cfg.noise == "central":
            led.add_view(
                "update_in_clear",
                "the curious in-run server (attacks.inversion) reads each clipped update "
                "before the central noise: a release without noise",
                relation=rel,
            )
        if self.secure_aggregation:
            led.notes.append(
                "secure aggregation: the sum is of SecAgg+-quantised updates, so one client moves it "
                f"by at most C + {self.sensitivity_slack:.3g} (one rounding step per coordinate); "
                "the multipliers use that"
            )
        return led

    def _round_multiplier(self, noise_std_on_sum: float, clip_norm: float) -> float:
        """The multiplier of this round's release (update sum + shifted-bit sum)
        w.r.t. one client's effect."""
        k = 2.0 if self.replace_one else 1.0
        parts = [(noise_std_on_sum, k * (clip_norm + self.sensitivity_slack))]
        if self.adaptive is not None:
            parts.append((self.adaptive.count_stddev, k * 0.5))
        return gaussian_multiplier(*parts)

    def _sampled(self, event: E.DpEvent) -> E.DpEvent:
        p = self.plan
        return sampled(
            event,
            sampling=p.sampling,
            rate=p.sampling_rate,
            num_clients=p.num_clients,
            sample_size=p.sample_size,
        )

    def _record_round(
        self, server_round: int, client_ids: tuple[int, ...], total_std: float, c: float
    ) -> None:
        g = gaussian(self._round_multiplier(total_std, c))
        led = self.ledger
        led.record("aggregate", self._sampled(g), round=server_round, what=f"noisy sum (C = {c:.4g})")
        if "forced_target" in led.views:
            forced = set(self.forced.get(server_round, ()))
            for t in sorted({t for ts in self.forced.values() for t in ts}):
                led.record(
                    "forced_target",
                    g if t in forced else self._sampled(g),
                    round=server_round,
                    subject=t,
                    what="forced into the round" if t in forced else "sampled like any client",
                )
        if self.cfg.noise == "local" and "update_in_clear" in led.views:
            local = gaussian(local_noise_std(self.update_z, c, self.m) / (2.0 * c))
            for pid in client_ids:
                led.record(
                    "update_in_clear",
                    local,
                    round=server_round,
                    subject=pid,
                    what="noisy update in the clear",
                )
        elif server_round in self.observed_rounds and "update_in_clear" in led.views:
            led.record(
                "update_in_clear",
                E.NonPrivateDpEvent(),
                round=server_round,
                what="clipped updates read before the central noise",
            )

    # ---- SAMPLING + TRAINING INSTRUCTIONS ----
    def server_config(self, server_round: int) -> dict[str, float | int | str]:
        return {"dp-clip-norm": float(self.clip_norm)}

    # ---- CLIENT SIDE ----
    def client_update(
        self, delta: torch.Tensor, ctx: ClientContext, config: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        c = float(config.get("dp-clip-norm", self.cfg.clip_norm))
        clipped, norm = clip_update(delta, c)
        if self.cfg.noise == "local":
            std = local_noise_std(self.update_z, c, self.m)
            clipped = clipped + torch.normal(
                0.0,
                std,
                clipped.shape,
                generator=ctx.private_generator("dp-local-noise"),
                dtype=torch.float64,
            ).to(clipped.dtype)
        if self.adaptive is None:
            return clipped, {}
        return clipped, {"dp-clip-bit": 0.5 if norm <= c else -0.5}

    # ---- SERVER SIDE ----
    def noise_std_on_sum(self, num_received: int) -> float:
        """Std of the server's Gaussian on the sum of the received updates."""
        full = self.update_z * self.clip_norm
        if self.cfg.noise == "central":
            return full
        return full * math.sqrt(max(0.0, 1.0 - num_received / self.m))

    def total_noise_std(self, num_received: int) -> float:
        """Std of all the noise in the released sum: the server's, plus the clients' own with local noise."""
        server = self.noise_std_on_sum(num_received)
        if self.cfg.noise == "central":
            return server
        local = local_noise_std(self.update_z, self.clip_norm, self.m)
        return math.sqrt(server**2 + num_received * local**2)

    def _generator(self, server_round: int, purpose: str) -> torch.Generator:
        return private_generator(self.server_key, server_round, purpose)

    def server_aggregate(
        self, update: torch.Tensor, client_metrics: list[dict[str, float]], ctx: RoundContext
    ) -> torch.Tensor:
        n = len(client_metrics)
        rnd = ctx.server_round
        out = noisy_sum_average(
            update,
            num_received=n,
            noise_std=self.noise_std_on_sum(n),
            expected_clients=self.m,
            generator=self._generator(rnd, "dp-central-noise"),
        )
        self._record_round(rnd, ctx.client_ids, self.total_noise_std(n), self.clip_norm)
        self.clip_history.append(self.clip_norm)
        if self.adaptive is not None:
            # clients' shifted bits; rows without one (an audit's canary clients) do not vote on the clip norm
            bits = [float(mt["dp-clip-bit"]) for mt in client_metrics if "dp-clip-bit" in mt]
            self.noisy_fraction = self.adaptive.update(
                bits, expected_clients=self.m, generator=self._generator(rnd, "dp-clip-count")
            )
            self.clip_norm = self.adaptive.clip_norm
        return out

    def epsilons(self) -> dict[str, float]:
        return self.ledger.epsilons()

    def round_report(self, server_round: int, client_metrics: list[dict[str, float]]) -> dict[str, float]:
        self.rounds_done += 1
        eps = self.epsilons()
        out: dict[str, Any] = {
            "epsilon": max(eps.values()),
            "delta": self.ledger.delta,
            "clip_norm": self.clip_history[-1] if self.clip_history else self.clip_norm,
        }
        for view, e in eps.items():
            out[f"epsilon_{view}"] = e
        if self.noisy_fraction is not None:
            out["noisy_unclipped_fraction"] = self.noisy_fraction  # the released (noised) estimate only
        return out

    def _next_round_events(self) -> E.DpEvent:
        return self._sampled(
            gaussian(self._round_multiplier(self.total_noise_std(int(self.m)), self.clip_norm))
        )

    def budget_exhausted(self) -> bool:
        """True once one more round would take ε above ``target_epsilon`` (``on_budget = "stop"``)."""
        if self.target_epsilon is None or self.on_budget != "stop":
            return False
        nxt = self._next_round_events()
        worst = self.ledger.epsilon("aggregate", extra=[nxt])
        for view in self.ledger.views:
            if view != "aggregate":
                worst = max(worst, self.ledger.epsilon(view))
        return worst > self.target_epsilon

    def summary(self) -> dict[str, Any]:
        view, eps = self.ledger.worst()
        ledger = self.ledger.to_dict()
        extra: dict[str, Any] = {
            "clip_norm": self.cfg.clip_norm,
            "adaptive_clipping": self.adaptive is not None,
            "noise": self.cfg.noise,
            "update_noise_multiplier": self.update_z,
            "expected_clients_per_round": self.m,
            "aggregate": "uniform sum of clipped updates / expected m",
            "target_epsilon": self.target_epsilon,
            "on_budget": self.on_budget,
            "epsilon": eps,
            "epsilon_view": view,
            "epsilons": self.ledger.epsilons(),
            "noise_randomness": self.randomness,
            "ledger": ledger,
        }
        if self.adaptive is not None:
            extra.update(
                clipped_count_stddev=self.count_stddev,
                final_clip_norm=self.clip_norm,
                target_quantile=self.adaptive.target_quantile,
                clip_norm_lr=self.adaptive.lr,
                clip_bits="shifted to ±½ (sensitivity ½), as TF Privacy's quantile estimator",
            )
        p = self.plan
        block: dict[str, Any] = {
            "level": "client",
            "delta": self.ledger.delta,
            "accountant": ledger["views"]["aggregate"]["accountant"],
            "noise_multiplier": p.noise_multiplier,
            "sampling_rate": p.sampling_rate,
            "steps": self.rounds_done,
            "neighboring_relation": "replace_one" if self.replace_one else "add_or_remove_one",
            "sampling": {
                "poisson": "poisson",
                "fixed": "fixed-size without replacement",
                "none": "none (no amplification)",
            }[p.sampling],
        }
        if p.sampling == "fixed":
            block.update(num_clients=p.num_clients, sample_size=p.sample_size)
        block.update(extra)
        return block
