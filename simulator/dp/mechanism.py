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
* client level: ``dp-update-norm`` (‖Δ‖ before clipping) and ``dp-unclipped`` (1.0 when ‖Δ‖ ≤ C).

Client level assumes the aggregate handed to :meth:`server_aggregate` is the **uniform** mean of the
received (clipped) updates: :attr:`PrivacyMechanism.uniform_weights` is True and the runtime must then
aggregate with equal weights. The mechanism turns that mean back into the sum, adds noise and divides by the
fixed expected cohort size ``m = q·N`` (McMahan et al. 2018); the reported ε is for that estimator.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from dp_accounting import dp_event as E
from torch import nn

from simulator.context import ClientContext, RoundContext, make_generator
from simulator.dp.accounting import ClientLevelAccounting, calibrate_noise_multiplier, epsilon_pld
from simulator.dp.client_level import (AdaptiveClipState, clip_update, local_noise_std, noisy_sum_average,
                                       update_noise_multiplier)
from simulator.dp.dpsgd import opacus_epsilon, train_dpsgd
from simulator.dp.dpsgd_f import FeatureTransform, private_feature_transform, to_raw_space, to_transformed_space
from simulator.dp.input_perturbation import input_perturbation_epsilon, perturb_inputs
from simulator.training import TrainHooks, TrainStats, train_local

__all__ = ["PrivacyMechanism", "NoPrivacy", "RecordLevelDP", "ClientLevelDP", "build_privacy",
           "client_level_accounting"]

HISTORY_KEY = "dp-history"


class PrivacyMechanism:
    """No-op base: every hook leaves the run unchanged."""

    #: True when the ε assumes the aggregate passed to :meth:`server_aggregate` is an unweighted mean.
    uniform_weights: bool = False

    def server_config(self, server_round: int) -> dict[str, float | int | str]:
        return {}

    def client_train(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext,
                     config: dict[str, Any], hooks: TrainHooks | None) -> tuple[TrainStats, dict[str, float]] | None:
        return None

    def client_update(self, delta: torch.Tensor, ctx: ClientContext,
                      config: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return delta, {}

    def server_aggregate(self, update: torch.Tensor, client_metrics: list[dict[str, float]],
                         ctx: RoundContext) -> torch.Tensor:
        return update

    def round_report(self, server_round: int, client_metrics: list[dict[str, float]]) -> dict[str, float]:
        return {}

    def budget_exhausted(self) -> bool:
        return False

    def summary(self) -> dict[str, Any] | None:
        return None


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

    def __init__(self, cfg: Any, *, delta: float, rounds: int, target_epsilon: float | None = None,
                 on_budget: str = "stop") -> None:
        self.cfg, self.delta, self.rounds = cfg, delta, rounds
        self.target_epsilon, self.on_budget = target_epsilon, on_budget
        self._z_cache: dict[tuple[int, int, int | None, int], float] = {}
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
                self._z_cache[key] = calibrate_noise_multiplier(target_epsilon=self.target_epsilon, rounds=1,
                                                                make=make)
            else:
                from opacus.accountants.utils import get_noise_multiplier

                per_epoch = math.ceil(n / t.batch_size)
                steps = t.epochs * per_epoch if t.max_steps is None else min(t.max_steps, t.epochs * per_epoch)
                q, count = (1.0 / per_epoch, steps) if self.cfg.poisson_sampling else (1.0, t.epochs)
                self._z_cache[key] = float(get_noise_multiplier(
                    target_epsilon=self.target_epsilon, target_delta=self.delta, sample_rate=q,
                    steps=count * self.rounds, accountant=self.cfg.accountant))
        return self._z_cache[key]

    # ---- CLIENT SIDE ----
    def client_train(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext,
                     config: dict[str, Any], hooks: TrainHooks | None) -> tuple[TrainStats, dict[str, float]] | None:
        if hooks is not None:
            return None  # an attacker with training hooks deviates from the protocol: plain SGD, no ε claimed
        z = self.noise_multiplier(int(x.shape[0]), ctx)
        if self.cfg.mechanism == "input":
            # round-independent seed: the same noisy copy every round (one release)
            g = make_generator(ctx.seed, ctx.partition_id, "dp-input-perturbation")
            xn = perturb_inputs(x, bound=self.cfg.feature_clip_norm, noise_multiplier=z, generator=g)
            stats = train_local(model, xn, y, ctx.train, generator=ctx.generator("train"))
            eps = input_perturbation_epsilon(z, self.delta)
            return stats, {"epsilon": eps, "dp-noise-multiplier": z}
        history = [tuple(r) for r in np.asarray(ctx.state.get(HISTORY_KEY, np.zeros((0, 3)))).tolist()]
        transform = None
        if self.cfg.feature_preprocessing == "dpsgd_f":
            transform = FeatureTransform.from_state(ctx.state)
            if transform is None:  # paid once per client and run
                transform, rows = private_feature_transform(
                    x, bound=self.cfg.feature_clip_norm, noise_multiplier=self.cfg.preprocessing_noise_multiplier,
                    quantile=self.cfg.preprocessing_quantile, generator=ctx.generator("dpsgdf"))
                history += rows
                ctx.state.update(transform.to_state())
            x = transform.apply(x)
            to_transformed_space(model, transform)
        res = train_dpsgd(model, x, y, ctx.train, noise_multiplier=z, max_grad_norm=self.cfg.max_grad_norm,
                          delta=self.delta, generator=ctx.generator("dp-batches"),
                          noise_generator=ctx.generator("dp-noise"), clipping=self.cfg.clipping,
                          grad_sample_mode=self.cfg.grad_sample_mode, poisson_sampling=self.cfg.poisson_sampling,
                          accountant=self.cfg.accountant, history=history)
        if transform is not None:
            to_raw_space(model, transform)
        ctx.state[HISTORY_KEY] = np.asarray(res.history, dtype=np.float64).reshape(-1, 3)
        metrics = {"epsilon": res.epsilon, "dp-noise-multiplier": z, "dp-sample-rate": res.sample_rate,
                   "dp-steps": float(res.stats.steps)}
        if self.target_epsilon is not None and self.on_budget == "stop":
            metrics["epsilon-next"] = opacus_epsilon(res.history + res.rows, accountant=self.cfg.accountant,
                                                     delta=self.delta)
        return res.stats, metrics

    # ---- SERVER SIDE ----
    def round_report(self, server_round: int, client_metrics: list[dict[str, float]]) -> dict[str, float]:
        self.rounds_done += 1
        eps = [float(m["epsilon"]) for m in client_metrics if "epsilon" in m]
        out: dict[str, float] = {"delta": self.delta}
        if eps:
            i = int(np.argmax(eps))
            if eps[i] >= self.worst_epsilon:
                self.worst_epsilon, self.worst_metrics = eps[i], dict(client_metrics[i])
            out["epsilon_round_max"] = eps[i]
        out["epsilon"] = self.worst_epsilon
        if self.target_epsilon is not None and self.on_budget == "stop":
            nxt = [float(m["epsilon-next"]) for m in client_metrics if "epsilon-next" in m]
            if self.worst_epsilon > self.target_epsilon or (nxt and max(nxt) > self.target_epsilon):
                self._exhausted = True
        return out

    def budget_exhausted(self) -> bool:
        return self._exhausted

    def summary(self) -> dict[str, Any]:
        c = self.cfg
        block: dict[str, Any] = {
            "level": "record", "mechanism": c.mechanism, "epsilon": self.worst_epsilon, "delta": self.delta,
            "epsilon_is": "the worst client's cumulative record-level ε (not user-level DP)",
            "noise_multiplier": self.worst_metrics.get("dp-noise-multiplier", c.noise_multiplier),
            "neighboring_relation": "add_or_remove_one" if c.mechanism == "gradient" else "replace_one_features",
            "rounds": self.rounds_done, "target_epsilon": self.target_epsilon, "on_budget": self.on_budget,
        }
        if c.mechanism == "gradient":
            block.update(accountant=f"opacus-{c.accountant}", max_grad_norm=c.max_grad_norm, clipping=c.clipping,
                         grad_sample_mode=c.grad_sample_mode,
                         sampling="poisson (local batches)" if c.poisson_sampling
                         else "shuffled fixed batches, no amplification (z, q=1, one step per epoch)",
                         sampling_rate=self.worst_metrics.get("dp-sample-rate"),
                         steps=self.worst_metrics.get("dp-steps"),
                         feature_preprocessing=c.feature_preprocessing)
            if c.feature_preprocessing == "dpsgd_f":
                block["preprocessing_noise_multiplier"] = c.preprocessing_noise_multiplier
        else:
            block.update(accountant="pld", sampling="none (one release of the noisy features)", steps=1,
                         sampling_rate=1.0, feature_clip_norm=c.feature_clip_norm,
                         labels="not protected (released as is)")
        return block


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

    * ``central``: clients clip; the server adds ``N(0, (z_Δ·C)²)`` to the sum of the received clipped
      updates and divides by ``m``; the noise std on the average is ``z_Δ·C/m``.
    * ``local``: each client adds ``N(0, (z_Δ·C)²/m)`` to its clipped update, so ``m`` clients' noise sums to
      the central noise. When fewer than ``m`` replies arrive (Poisson sampling, drop-outs) the server tops the
      sum's noise up to ``(z_Δ·C)²``; with more, there is more noise than accounted (still valid). The reported ε
      is that of the noisy *sum*, so it holds only if the server sees the sum alone (secure aggregation); the
      weaker guarantee of one update seen in the clear is reported as ``epsilon_single_update``.

    ``z_Δ = z`` with fixed clipping and ``(z⁻² − (2σ_b)⁻²)^(−1/2)`` with adaptive clipping (Andrew et al.), so
    the accounted multiplier is always ``z``.
    """

    uniform_weights = True

    def __init__(self, cfg: Any, accounting: ClientLevelAccounting, *, expected_clients: float,
                 target_epsilon: float | None = None, on_budget: str = "stop") -> None:
        self.cfg, self.acc, self.m = cfg, accounting, float(expected_clients)
        self.target_epsilon, self.on_budget = target_epsilon, on_budget
        z = accounting.noise_multiplier
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

    # ---- SAMPLING + TRAINING INSTRUCTIONS ----
    def server_config(self, server_round: int) -> dict[str, float | int | str]:
        return {"dp-clip-norm": float(self.clip_norm)}

    # ---- CLIENT SIDE ----
    def client_update(self, delta: torch.Tensor, ctx: ClientContext,
                      config: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        c = float(config.get("dp-clip-norm", self.cfg.clip_norm))
        clipped, norm = clip_update(delta, c)
        if self.cfg.noise == "local":
            std = local_noise_std(self.update_z, c, self.m)
            clipped = clipped + torch.normal(0.0, std, clipped.shape, generator=ctx.generator("dp-local-noise"),
                                             dtype=torch.float64).to(clipped.dtype)
        return clipped, {"dp-update-norm": norm, "dp-unclipped": 1.0 if norm <= c else 0.0}

    # ---- SERVER SIDE ----
    def noise_std_on_sum(self, num_received: int) -> float:
        """Std of the server's Gaussian on the sum of the received updates."""
        full = self.update_z * self.clip_norm
        if self.cfg.noise == "central":
            return full
        return full * math.sqrt(max(0.0, 1.0 - num_received / self.m))

    def server_aggregate(self, update: torch.Tensor, client_metrics: list[dict[str, float]],
                         ctx: RoundContext) -> torch.Tensor:
        n = len(client_metrics)
        out = noisy_sum_average(update, num_received=n, noise_std=self.noise_std_on_sum(n),
                                expected_clients=self.m, generator=ctx.generator("dp-central-noise"))
        self.clip_history.append(self.clip_norm)
        if self.adaptive is not None:
            bits = [float(mt.get("dp-unclipped", 0.0)) for mt in client_metrics]
            self.adaptive.update(bits, expected_clients=self.m, generator=ctx.generator("dp-clip-count"))
            self.clip_norm = self.adaptive.clip_norm
        return out

    def round_report(self, server_round: int, client_metrics: list[dict[str, float]]) -> dict[str, float]:
        self.rounds_done += 1
        out = {"epsilon": self.acc.epsilon(self.rounds_done), "delta": self.acc.delta,
               "clip_norm": self.clip_history[-1] if self.clip_history else self.clip_norm}
        other = self.acc.cross_check
        if other is not None:
            out[f"epsilon_{other}"] = self.acc.epsilon(self.rounds_done, other)
        if client_metrics:
            out["unclipped_fraction"] = float(np.mean([m.get("dp-unclipped", 0.0) for m in client_metrics]))
        return out

    def budget_exhausted(self) -> bool:
        """True once one more round would take ε above ``target_epsilon`` (``on_budget = "stop"``)."""
        if self.target_epsilon is None or self.on_budget != "stop":
            return False
        return self.acc.epsilon(self.rounds_done + 1) > self.target_epsilon

    def summary(self) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "clip_norm": self.cfg.clip_norm, "adaptive_clipping": self.adaptive is not None,
            "noise": self.cfg.noise, "update_noise_multiplier": self.update_z,
            "expected_clients_per_round": self.m, "aggregate": "uniform sum of clipped updates / expected m",
            "target_epsilon": self.target_epsilon, "on_budget": self.on_budget,
        }
        if self.adaptive is not None:
            extra.update(clipped_count_stddev=self.count_stddev, final_clip_norm=self.clip_norm,
                         target_quantile=self.adaptive.target_quantile, clip_norm_lr=self.adaptive.lr)
        if self.cfg.noise == "local":
            extra["epsilon_single_update"] = epsilon_pld(
                E.GaussianDpEvent(self.update_z * math.sqrt(self.m)), max(self.rounds_done, 1), self.acc.delta)
            extra["epsilon_single_update_is"] = ("one client's noisy update seen in the clear in every round, "
                                                 "no amplification (without secure aggregation)")
        return self.acc.privacy_block(rounds=self.rounds_done, level="client", extra=extra)


def client_level_accounting(scenario: Any, noise_multiplier: float | None = None, *,
                            accountant: str | None = None) -> ClientLevelAccounting:
    """The accountant matching the scenario's client sampling (see :mod:`simulator.dp.checks`);
    ``accountant`` overrides ``privacy.accountant``."""
    p, f, n = scenario.privacy, scenario.federation, scenario.data.num_clients
    m = scenario.num_sampled_expected
    z = p.client.noise_multiplier if noise_multiplier is None else noise_multiplier
    sampling = f.sampling if p.amplification else "none"
    return ClientLevelAccounting(noise_multiplier=z, sampling=sampling, sampling_rate=m / n, num_clients=n,
                                 sample_size=int(round(m)), delta=p.delta, accountant=accountant or p.accountant)


def build_privacy(scenario: Any, compressor: Any = None) -> PrivacyMechanism:
    """The mechanism for a scenario's ``[privacy]`` section.

    With ``level = "none"`` and a compressor that noises its sketches (``privacy_params()`` not None), the
    mechanism is :class:`~simulator.dp.sketch_dp.SketchDP`, which accounts that noise."""
    p = scenario.privacy
    if p.level == "none":
        params = getattr(compressor, "privacy_params", lambda: None)()
        if params is not None:
            from simulator.dp.sketch_dp import SketchDP, sketch_accounting

            z, c = params
            return SketchDP(sketch_accounting(scenario, z), c, scenario.compression.name)
        return NoPrivacy()
    if p.level == "record":
        return RecordLevelDP(p.record, delta=p.record.delta or p.delta, rounds=scenario.federation.rounds,
                             target_epsilon=p.target_epsilon, on_budget=p.on_budget)
    acc = client_level_accounting(scenario)
    if p.target_epsilon is not None and p.on_budget == "calibrate":
        z = calibrate_noise_multiplier(target_epsilon=p.target_epsilon, rounds=scenario.federation.rounds,
                                       make=lambda z: client_level_accounting(scenario, z))
        acc = client_level_accounting(scenario, z)
    return ClientLevelDP(p.client, acc, expected_clients=scenario.num_sampled_expected,
                         target_epsilon=p.target_epsilon, on_budget=p.on_budget)
