"""DP-FedAvg: clipping, central/local noise std, adaptive clipping update."""

from __future__ import annotations

import math

import torch

from simulator.context import ClientContext, RoundContext
from simulator.dp.accounting import ClientLevelAccounting
from simulator.dp.client_level import AdaptiveClipState, update_noise_multiplier
from simulator.dp.mechanism import ClientLevelDP
from simulator.flat import Layout
from simulator.scenario.privacy import AdaptiveClippingConfig, ClientDPConfig
from simulator.training import LocalTrainConfig

D = 20_000


def _mech(
    *,
    noise: str = "central",
    adaptive: AdaptiveClippingConfig | None = None,
    z: float = 1.2,
    clip: float = 0.5,
    m: float = 5.0,
) -> ClientLevelDP:
    cfg = ClientDPConfig(clip_norm=clip, noise_multiplier=z, noise=noise, adaptive_clipping=adaptive)
    acc = ClientLevelAccounting(
        noise_multiplier=z,
        sampling="poisson",
        sampling_rate=m / 20,
        num_clients=20,
        sample_size=int(m),
        delta=1e-5,
        accountant="pld",
    )
    return ClientLevelDP(cfg, acc, expected_clients=m)


def _rctx(rnd: int, n: int) -> RoundContext:
    return RoundContext(
        server_round=rnd,
        seed=3,
        global_vector=torch.zeros(D),
        layout=Layout(("w",), ((D,),)),
        client_ids=tuple(range(n)),
        num_examples=(10,) * n,
        num_clients=20,
        expected_clients_per_round=5.0,
    )


def _cctx(pid: int) -> ClientContext:
    return ClientContext(
        partition_id=pid,
        server_round=1,
        seed=3,
        num_examples=10,
        global_vector=torch.zeros(D),
        layout=Layout(("w",), ((D,),)),
        train=LocalTrainConfig(),
        num_clients=20,
        expected_clients_per_round=5.0,
    )


def test_client_update_clips_to_c_and_sends_only_the_shifted_bit() -> None:
    big = torch.randn(D, generator=torch.Generator().manual_seed(0))
    small = big / big.norm() * 0.1
    fixed = _mech()
    out, met = fixed.client_update(big, _cctx(0), {"dp-clip-norm": 0.5})
    assert float(out.norm()) <= 0.5 * (1 + 1e-5)
    assert met == {}  # fixed clipping: no per-client value beside the update (no norm, no bit)
    mech = _mech(adaptive=AdaptiveClippingConfig(clipped_count_stddev=1.0))
    out, met = mech.client_update(big, _cctx(0), {"dp-clip-norm": 0.5})
    assert met == {"dp-clip-bit": -0.5}  # TF Privacy's shifted bit: sensitivity 1/2
    out, met = mech.client_update(small, _cctx(0), {"dp-clip-norm": 0.5})
    assert torch.equal(out, small) and met == {"dp-clip-bit": 0.5}


def test_central_noise_std_is_z_c_over_expected_clients() -> None:
    # D = 20,000 independent draws of the noise on a zero aggregate; std of the sample std ≈ σ/√(2D) ≈ 0.5 %
    mech = _mech(z=1.2, clip=0.5, m=5.0)
    out = mech.server_aggregate(torch.zeros(D), [{}] * 7, _rctx(1, 7))
    assert abs(float(out.std()) / (1.2 * 0.5 / 5.0) - 1) < 0.03
    # the mean of the received updates is turned into their sum and divided by the expected m
    mech0 = _mech(z=1e-12)
    agg = mech0.server_aggregate(torch.full((D,), 0.2), [{}] * 3, _rctx(2, 3))
    assert torch.allclose(agg, torch.full((D,), 0.2 * 3 / 5.0), atol=1e-6)


def test_local_noise_sums_to_central_noise() -> None:
    mech = _mech(noise="local", z=1.0, clip=1.0, m=5.0)
    zeros = torch.zeros(D)
    noisy = [mech.client_update(zeros, _cctx(p), {"dp-clip-norm": 1.0})[0] for p in range(5)]
    assert abs(float(noisy[0].std()) / (1.0 / math.sqrt(5)) - 1) < 0.03  # per client z·C/√m
    out = mech.server_aggregate(torch.stack(noisy).mean(0), [{}] * 5, _rctx(1, 5))  # no top-up at n = m
    assert abs(float(out.std()) / (1.0 / 5.0) - 1) < 0.03
    assert mech.noise_std_on_sum(2) == math.sqrt(1 - 2 / 5)  # top-up when fewer than m replies


def test_adaptive_clipping_geometric_update_closed_form() -> None:
    # with σ_b → 0 the update is C ← C·exp(−η(b̄ − γ)), b̄ = Σb/m (Andrew et al. 2021, Alg. 1)
    st = AdaptiveClipState(clip_norm=1.0, target_quantile=0.5, lr=0.2, count_stddev=1e-12)
    g = torch.Generator().manual_seed(0)
    frac = st.update([0.5, 0.5, 0.5, 0.5, -0.5], expected_clients=5.0, generator=g)
    assert abs(frac - 0.8) < 1e-9
    assert math.isclose(st.clip_norm, math.exp(-0.2 * (0.8 - 0.5)), rel_tol=1e-9)


def test_adaptive_clipping_moves_toward_target_quantile() -> None:
    norms = torch.linspace(0.1, 2.0, 20)  # clients' update norms; the median is ≈ 1.05
    target = float(norms.median())
    for start in (0.05, 5.0):
        mech = _mech(
            adaptive=AdaptiveClippingConfig(target_quantile=0.5, clip_norm_lr=0.3, clipped_count_stddev=1.0),
            clip=start,
            m=20.0,
        )
        for rnd in range(1, 80):
            c = mech.server_config(rnd)["dp-clip-norm"]
            mets = [{"dp-clip-bit": 0.5 if n <= c else -0.5} for n in norms]
            mech.server_aggregate(torch.zeros(D), mets, _rctx(rnd, 20))
        assert abs(mech.clip_norm - target) < 0.15, (start, mech.clip_norm)


def test_adaptive_noise_multiplier_keeps_total_privacy() -> None:
    z, sb = 1.0, 1.0
    zd = update_noise_multiplier(z, sb)
    assert math.isclose(zd**-2 + (2 * sb) ** -2, z**-2, rel_tol=1e-12)
    assert _mech(adaptive=AdaptiveClippingConfig(clipped_count_stddev=sb), z=z).update_z == zd
