"""Scenario section ``[privacy]``: record-level DP (DP-SGD, input perturbation) or client-level DP
(DP-FedAvg).

Layout of the section::

    [privacy]
    level = "client"          # "none" | "record" | "client"
    delta = 1e-5
    target_epsilon = 8.0      # optional budget
    on_budget = "stop"        # "stop" | "calibrate"
    accountant = "pld"        # reported user-level ε ("rdp" is always computed as a cross-check)
    amplification = true      # false: account every round as an unsampled Gaussian (no amplification)
    noise_seed = 7            # optional: reproducible noise (default: fresh OS entropy, not reproducible)

    [privacy.client]          # DP-FedAvg (McMahan et al., ICLR 2018)
    clip_norm = 1.0
    noise_multiplier = 1.0
    noise = "central"         # "central" | "local"
    [privacy.client.adaptive_clipping]   # Andrew et al., NeurIPS 2021 (optional)
    target_quantile = 0.5

    [privacy.record]          # DP-SGD inside each client (Abadi et al., CCS 2016; Opacus)
    noise_multiplier = 1.0
    max_grad_norm = 1.0

Cross-section rules (sampling scheme vs analysis, aggregator, model) are checked in
:mod:`simulator.dp.checks`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from simulator.scenario.base import Strict

__all__ = ["AdaptiveClippingConfig", "ClientDPConfig", "PrivacyConfig", "RecordDPConfig"]


class RecordDPConfig(Strict):
    """Record-level DP inside every client: DP-SGD (gradient perturbation) or input perturbation."""

    mechanism: Literal["gradient", "input"] = "gradient"
    # z: DP-SGD noise std / C, or input-noise std / sensitivity
    noise_multiplier: float = Field(default=1.0, gt=0.0)
    # C, per-example gradient clip (flat; split evenly per layer)
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    clipping: Literal["flat", "per_layer"] = "flat"
    grad_sample_mode: Literal["hooks", "functorch", "ew", "ghost"] = "hooks"
    poisson_sampling: bool = True  # false: shuffled fixed batches, accounted without amplification
    accountant: Literal["rdp", "prv"] = "prv"  # Opacus accountant of the record-level ε
    delta: float | None = Field(default=None, gt=0.0, lt=1.0)  # record-level δ; None: the section's delta
    # B: each example's feature vector is clipped to ‖x‖ ≤ B
    feature_clip_norm: float = Field(default=10.0, gt=0.0)
    feature_preprocessing: Literal["none", "dpsgd_f"] = "none"
    # DPSGD-F mean and norm-histogram noise
    preprocessing_noise_multiplier: float = Field(default=2.0, gt=0.0)
    # DPSGD-F: scale so this share has ‖x−μ‖ ≤ r
    preprocessing_quantile: float = Field(default=0.9, gt=0.0, le=1.0)


class AdaptiveClippingConfig(Strict):
    """Adaptive clipping to a norm quantile (Andrew et al., 2021)."""

    target_quantile: float = Field(default=0.5, gt=0.0, lt=1.0)  # γ
    clip_norm_lr: float = Field(default=0.2, gt=0.0)  # η_C of the geometric update
    # σ_b; None: expected clients / 20 (paper default)
    clipped_count_stddev: float | None = Field(default=None, gt=0.0)


class ClientDPConfig(Strict):
    """Client-level DP-FedAvg: clip each update, Gaussian noise on the sum, fixed denominator m = q·N."""

    clip_norm: float = Field(default=1.0, gt=0.0)  # C (initial C when adaptive)
    # z (the accounted one; 0: no noise, ε = ∞; replaced by calibrate)
    noise_multiplier: float = Field(default=1.0, ge=0.0)
    noise: Literal["central", "local"] = "central"
    adaptive_clipping: AdaptiveClippingConfig | None = None


class PrivacyConfig(Strict):
    level: Literal["none", "record", "client"] = "none"
    delta: float = Field(default=1e-5, gt=0.0, lt=1.0)
    target_epsilon: float | None = Field(default=None, gt=0.0)
    on_budget: Literal["stop", "calibrate"] = "stop"
    accountant: Literal["pld", "rdp"] = "pld"  # client level: the reported accountant; the other cross-checks
    amplification: bool = True
    # the secret behind DP noise and secret sampling; None: fresh OS entropy per process (not reproducible).
    # An int makes DP runs reproducible, but anyone holding the scenario can regenerate the noise.
    noise_seed: int | None = Field(default=None, ge=0)
    record: RecordDPConfig = RecordDPConfig()
    client: ClientDPConfig = ClientDPConfig()

    @model_validator(mode="after")
    def _level_sections(self) -> PrivacyConfig:
        fs = self.model_fields_set
        if self.level != "record" and "record" in fs:
            raise ValueError(f'[privacy.record] is given but level = {self.level!r}; set level = "record"')
        if self.level != "client" and "client" in fs:
            raise ValueError(f'[privacy.client] is given but level = {self.level!r}; set level = "client"')
        return self
