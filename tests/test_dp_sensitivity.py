"""Sensitivity checks: each DP mechanism's released pre-noise statistic on adversarial neighbours vs its
ledger.

Every ledger event's noise multiplier means *noise std / L2 distance between the released statistic on two
neighbouring inputs* (see :mod:`simulator.dp.ledger`). For each mechanism the tests here

1. build adversarial inputs: huge (1e6·v), tiny and zero updates, updates exactly at the clip norm, random and
   worst-case directions (the sketch operator's top singular vector, its null space); for examples: huge
   features, gradient-maximising inputs with a wrong label, duplicates with another label;
2. compute the released statistic *before its noise* through privsim's own code path (noise multiplier 0, or
   the noise pinned or subtracted);
3. take the largest L2 distance over every neighbour pair tried (add or remove one, replace one);
4. assert it is at most the sensitivity the mechanism assumes (relative slack 1e-6) *and* that the worst case
   reaches it (≥ 99 %), so that a check whose inputs cannot reach the bound fails too;
5. read back the event the mechanism appended to its ledger and assert that its multiplier is exactly
   ``noise std that ran / measured worst distance`` (relative 1e-6): the event is not optimistic.

The noise stds "that ran" are the ``std`` arguments of the mechanisms' calls to ``torch.normal``, recorded by
:class:`NormalSpy` (Opacus draws its noise the same way), or, for the sketch noise (``torch.randn``),
recovered by subtracting the pre-noise sketch; they are never taken from the mechanisms' own std formulas.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from dp_accounting import dp_event as E

from simulator.context import ClientContext, RoundContext
from simulator.dp.accounting import ClientLevelAccounting
from simulator.dp.client_level import AdaptiveClipState
from simulator.dp.dpsgd import train_dpsgd
from simulator.dp.dpsgd_f import NUM_BINS, private_feature_transform
from simulator.dp.input_perturbation import clip_rows, perturb_inputs
from simulator.dp.mechanism import ClientLevelDP, RecordLevelDP, _row_event
from simulator.dp.sketch_dp import SketchDP
from simulator.flat import Layout
from simulator.models import build_model
from simulator.scenario.privacy import AdaptiveClippingConfig, ClientDPConfig, RecordDPConfig
from simulator.sketching.sketched import CountSketchCompressor, GaussianSketchCompressor, SRHTCompressor
from simulator.training import LocalTrainConfig

F64 = torch.float64
REL = 1e-6  # slack of "measured ≤ assumed" and of "event multiplier = std / measured"
ATTAINED = 0.99  # the worst case must reach this share of the assumed sensitivity
DELTA = 1e-5

# ---------------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------------
_REAL_NORMAL = torch.normal


class NormalSpy:
    """Stands in for ``torch.normal``: records ``(std, size)`` of every scalar-std call and returns the real
    draw, or the next tensor of :attr:`planned` (the test's own "noise") when one is queued."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, tuple[int, ...]]] = []
        self.planned: list[torch.Tensor] = []

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        a = dict(zip(("mean", "std", "size"), args))
        a.update(kwargs)
        if not isinstance(a.get("std"), (int, float)) or a.get("size") is None:
            return _REAL_NORMAL(*args, **kwargs)
        size = tuple(int(s) for s in a["size"])
        self.calls.append((float(a["std"]), size))
        if self.planned:
            out = self.planned.pop(0)
            assert tuple(out.shape) == size, f"planned noise of shape {tuple(out.shape)} for a draw of {size}"
            return out.to(a.get("dtype") or torch.get_default_dtype())
        return _REAL_NORMAL(*args, **kwargs)

    def stds(self) -> list[float]:
        return [s for s, _ in self.calls]


@pytest.fixture
def normal_spy(monkeypatch: pytest.MonkeyPatch) -> NormalSpy:
    spy = NormalSpy()
    monkeypatch.setattr(torch, "normal", spy)
    return spy


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dist(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm((a.to(F64) - b.to(F64)).reshape(-1)))


def _check_bound(measured: float, assumed: float, what: str) -> None:
    """measured ≤ assumed (relative slack 1e-6) and measured ≥ 0.99·assumed."""
    assert measured <= assumed * (1 + REL), f"{what}: measured {measured!r} exceeds the assumed {assumed!r}"
    assert measured >= ATTAINED * assumed, f"{what}: the worst case {measured!r} does not reach {assumed!r}"


def _gaussian_of(event: E.DpEvent) -> float:
    """The Gaussian multiplier inside a (Poisson / without-replacement / self-composed) sampled event."""
    while not isinstance(event, E.GaussianDpEvent):
        assert isinstance(
            event, (E.PoissonSampledDpEvent, E.SampledWithoutReplacementDpEvent, E.SelfComposedDpEvent)
        ), f"unexpected event {event!r}"
        event = event.event
    return float(event.noise_multiplier)


def _unit(d: int, g: torch.Generator) -> torch.Tensor:
    v = torch.randn(d, generator=g, dtype=F64)
    return v / v.norm()


def _adversarial_vectors(d: int, c: float, seed: int) -> list[torch.Tensor]:
    """Huge (±1e6·v, 1e6·e₀), tiny, zero, exactly-at-c (±c·u), just above / below c, and random norms."""
    g = _g(seed)
    u, v, w = _unit(d, g), _unit(d, g), _unit(d, g)
    e0 = torch.zeros(d, dtype=F64)
    e0[0] = 1.0
    out = [
        1e6 * v,
        -1e6 * v,
        1e6 * e0,
        1e-6 * w,
        torch.zeros(d, dtype=F64),
        c * u,
        -c * u,
        c * (1 + 1e-9) * w,
        -c * (1 - 1e-9) * w,
    ]
    out += [s * c * _unit(d, g) for s in (0.1, 0.7, 3.0, 40.0)]
    return out


def _add_remove(base: Sequence[int], k: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Pairs (cohort, cohort ± one member): remove each member of ``base``, add each of the ``k``
    candidates."""
    b = tuple(base)
    return [(b, b[:i] + b[i + 1 :]) for i in range(len(b))] + [(b, (*b, j)) for j in range(k)]


def _replace(base: Sequence[int], k: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Pairs (cohort, cohort with one member replaced by another candidate)."""
    b = tuple(base)
    return [(b, (*b[:i], j, *b[i + 1 :])) for i in range(len(b)) for j in range(k) if j != b[i]]


def _worst(pairs: Sequence[tuple[Any, Any]], release: Callable[[Any], torch.Tensor]) -> float:
    cache: dict[Any, torch.Tensor] = {}

    def rel(key: Any) -> torch.Tensor:
        if key not in cache:
            cache[key] = release(key)
        return cache[key]

    return max(_dist(rel(a), rel(b)) for a, b in pairs)


# ---------------------------------------------------------------------------------------------------
# client level (DP-FedAvg)
# ---------------------------------------------------------------------------------------------------
D = 64  # update length
C = 0.5  # clip norm
M = 5.0  # expected clients per round
N_CLIENTS = 20
ADAPTIVE = AdaptiveClippingConfig(target_quantile=0.5, clip_norm_lr=0.2, clipped_count_stddev=1.0)


def _client_mech(
    *,
    z: float,
    sampling: str = "poisson",
    noise: str = "central",
    adaptive: AdaptiveClippingConfig | None = None,
) -> ClientLevelDP:
    cfg = ClientDPConfig(clip_norm=C, noise_multiplier=z, noise=noise, adaptive_clipping=adaptive)
    acc = ClientLevelAccounting(
        noise_multiplier=z,
        sampling=sampling,
        sampling_rate=M / N_CLIENTS,
        num_clients=N_CLIENTS,
        sample_size=int(M),
        delta=DELTA,
        accountant="rdp" if sampling == "fixed" else "pld",
    )
    return ClientLevelDP(cfg, acc, expected_clients=M)


def _layout(d: int) -> Layout:
    return Layout(("w",), ((d,),))


def _cctx(pid: int, d: int = D, *, rnd: int = 1, noise_key: int = 11) -> ClientContext:
    return ClientContext(
        partition_id=pid,
        server_round=rnd,
        seed=3,
        num_examples=10,
        global_vector=torch.zeros(d),
        layout=_layout(d),
        train=LocalTrainConfig(),
        num_clients=N_CLIENTS,
        expected_clients_per_round=M,
        noise_key=noise_key + pid,
    )


def _rctx(rnd: int, n: int, d: int = D) -> RoundContext:
    return RoundContext(
        server_round=rnd,
        seed=3,
        global_vector=torch.zeros(d),
        layout=_layout(d),
        client_ids=tuple(range(n)),
        num_examples=(10,) * n,
        num_clients=N_CLIENTS,
        expected_clients_per_round=M,
    )


def _sum_release(
    mech0: ClientLevelDP, clipped: list[torch.Tensor]
) -> Callable[[tuple[int, ...]], torch.Tensor]:
    """The released sum of a cohort (indices into ``clipped``) without noise: the noise-free mechanism's
    ``server_aggregate`` on the uniform mean of the cohort's clipped updates, times the fixed denominator
    m."""

    def release(cohort: tuple[int, ...]) -> torch.Tensor:
        n = len(cohort)
        mean = torch.stack([clipped[i] for i in cohort]).mean(0) if n else torch.zeros(D, dtype=F64)
        return mech0.server_aggregate(mean, [{}] * n, _rctx(1, n)).to(F64) * mech0.m

    return release


def _measured_client_sums(noise: str) -> dict[str, float]:
    """Worst distance of the pre-noise released sum over add/remove pairs (from the full and from the empty
    cohort) and over replace-one pairs, the clipping done by ``ClientLevelDP.client_update`` itself."""
    mech0 = _client_mech(z=0.0, noise=noise)
    ups = _adversarial_vectors(D, C, seed=0)
    # z = 0: no local noise either (std 0), so this is the clipped update a client sends before its noise
    clipped = [mech0.client_update(u, _cctx(i), {"dp-clip-norm": C})[0] for i, u in enumerate(ups)]
    release = _sum_release(mech0, clipped)
    k, full = len(ups), tuple(range(len(ups)))
    return {
        "add_or_remove_one": _worst(_add_remove(full, k) + _add_remove((), k), release),
        "replace_one": _worst(_replace(full, k), release),
    }


@pytest.mark.parametrize(
    "sampling,noise,relation",
    [
        ("poisson", "central", "add_or_remove_one"),
        ("fixed", "central", "replace_one"),
        ("none", "central", "add_or_remove_one"),
        ("poisson", "local", "add_or_remove_one"),
    ],
)
def test_dpfedavg_sum_of_clipped_updates(
    sampling: str, noise: str, relation: str, normal_spy: NormalSpy
) -> None:
    """DP-FedAvg: the sum of clipped updates moves by ≤ C (add/remove one client) and ≤ 2C (replace one), both
    reached by a huge update; the ``aggregate`` event's multiplier is total std that ran / measured distance
    under the view's relation (replace-one for fixed-size cohorts, add/remove otherwise)."""
    measured = _measured_client_sums(noise)
    _check_bound(measured["add_or_remove_one"], C, "sum, add/remove one client")
    _check_bound(measured["replace_one"], 2 * C, "sum, replace one client")

    # one noisy round: the stds of every Gaussian draw that reaches the released sum
    mech = _client_mech(z=1.1, sampling=sampling, noise=noise)
    ups = _adversarial_vectors(D, C, seed=1)[:3]
    normal_spy.calls.clear()
    sent = [mech.client_update(u, _cctx(i), mech.server_config(1))[0] for i, u in enumerate(ups)]
    mech.server_aggregate(torch.stack(sent).mean(0), [{}] * len(sent), _rctx(1, len(sent)))
    sigma = math.sqrt(sum(s * s for s in normal_spy.stds()))
    assert len(normal_spy.calls) == (
        1 if noise == "central" else len(sent) + 1
    )  # local: + the server's top-up
    assert sigma == pytest.approx(mech.total_noise_std(len(sent)), rel=1e-12)
    view = mech.ledger.views["aggregate"]
    assert view.relation == relation
    event = view.entries[-1].event
    expected_type = {
        "poisson": E.PoissonSampledDpEvent,
        "fixed": E.SampledWithoutReplacementDpEvent,
        "none": E.GaussianDpEvent,
    }[sampling]
    assert isinstance(event, expected_type)
    assert _gaussian_of(event) == pytest.approx(sigma / measured[relation], rel=REL)


@pytest.mark.parametrize("sampling,relation", [("poisson", "add_or_remove_one"), ("fixed", "replace_one")])
def test_adaptive_clipping_shifted_bit_sum_and_joint_release(
    sampling: str, relation: str, normal_spy: NormalSpy
) -> None:
    """Adaptive clipping: the sum of the shifted clip bits (from ``client_update``) moves by ≤ ½ (add/remove)
    and ≤ 1 (replace); the round's (update sum, bit sum) event has multiplier (Σ (Δ_i/σ_i)²)^(−1/2) with the
    measured Δs and the stds that ran, equal to 1 / the worst whitened joint distance, and to Andrew et al.'s
    z (z/2 replace-one)."""
    z = 1.0
    mech = _client_mech(z=z, sampling=sampling, adaptive=ADAPTIVE)
    mech0 = _client_mech(z=0.0)
    ups = _adversarial_vectors(D, C, seed=2)
    replies = [mech.client_update(u, _cctx(i), {"dp-clip-norm": C}) for i, u in enumerate(ups)]
    clipped = [r[0] for r in replies]
    bits = [r[1]["dp-clip-bit"] for r in replies]
    assert sorted(set(bits)) == [-0.5, 0.5]
    sum_release = _sum_release(mech0, clipped)

    def bit_release(cohort: tuple[int, ...]) -> torch.Tensor:
        """The noise-free released bit sum: AdaptiveClipState.update with σ_b = 0 gives Σs/m + ½."""
        st = AdaptiveClipState(C, ADAPTIVE.target_quantile, ADAPTIVE.clip_norm_lr, count_stddev=0.0)
        frac = st.update([bits[i] for i in cohort], expected_clients=M, generator=_g(0))
        return torch.tensor([(frac - 0.5) * M], dtype=F64)

    k, full = len(ups), tuple(range(len(ups)))
    pairs = {"add_or_remove_one": _add_remove(full, k) + _add_remove((), k), "replace_one": _replace(full, k)}
    d_bits = {rel: _worst(p, bit_release) for rel, p in pairs.items()}
    d_sum = {rel: _worst(p, sum_release) for rel, p in pairs.items()}
    _check_bound(d_bits["add_or_remove_one"], 0.5, "shifted bit sum, add/remove")
    _check_bound(d_bits["replace_one"], 1.0, "shifted bit sum, replace")

    # the noisy round: σ_sum on the update sum, σ_b on the bit sum, as drawn
    n = 4
    sigma_planned = mech.total_noise_std(n)  # before server_aggregate moves the clip norm
    normal_spy.calls.clear()
    mech.server_aggregate(torch.stack(clipped[:n]).mean(0), [r[1] for r in replies[:n]], _rctx(1, n))
    (s_sum, size_sum), (s_b, size_b) = normal_spy.calls
    assert size_sum == (D,) and size_b == (1,)
    assert s_sum == pytest.approx(sigma_planned, rel=1e-12) and s_b == ADAPTIVE.clipped_count_stddev
    assert mech.ledger.views["aggregate"].relation == relation
    mult = _gaussian_of(mech.ledger.views["aggregate"].entries[-1].event)
    assert mult == pytest.approx(1.0 / math.hypot(d_sum[relation] / s_sum, d_bits[relation] / s_b), rel=REL)

    # the pair as one vector, whitened by the stds that ran: its worst distance is 1 / the multiplier
    def joint(cohort: tuple[int, ...]) -> torch.Tensor:
        return torch.cat([sum_release(cohort) / s_sum, bit_release(cohort) / s_b])

    assert mult == pytest.approx(1.0 / _worst(pairs[relation], joint), rel=REL)
    assert mult == pytest.approx(z if relation == "add_or_remove_one" else z / 2, rel=REL)  # Thm 1


def test_local_noise_message_in_the_clear(normal_spy: NormalSpy) -> None:
    """Local noise: one client's pre-noise message (``client_update`` with z = 0) moves by ≤ 2C when its data
    is replaced, reached by opposite huge updates; the ``update_in_clear`` event is local std that ran /
    2C."""
    mech0 = _client_mech(z=0.0, noise="local")
    ups = _adversarial_vectors(D, C, seed=3)
    msgs = [mech0.client_update(u, _cctx(0), {"dp-clip-norm": C})[0] for u in ups]
    measured = max(_dist(a, b) for a, b in itertools.combinations(msgs, 2))
    _check_bound(measured, 2 * C, "local message, replace one")

    mech = _client_mech(z=1.3, noise="local")
    normal_spy.calls.clear()
    sent = [mech.client_update(u, _cctx(i), mech.server_config(1))[0] for i, u in enumerate(ups[:3])]
    local_stds = normal_spy.stds()
    assert len(local_stds) == 3 and len(set(local_stds)) == 1
    sigma = local_stds[0]
    assert sigma == pytest.approx(mech.update_z * C / math.sqrt(M), rel=1e-12)  # z·C/√m, as documented
    for pid, s in enumerate(sent):  # the noise is really there: message − pre-noise message
        assert _dist(s, mech0.client_update(ups[pid], _cctx(pid), {})[0]) > 0
    mech.server_aggregate(torch.stack(sent).mean(0), [{}] * 3, _rctx(1, 3))
    view = mech.ledger.views["update_in_clear"]
    assert view.relation == "replace_one" and sorted(view.subjects) == [0, 1, 2]
    for entries in view.subjects.values():
        assert isinstance(entries[-1].event, E.GaussianDpEvent)
        assert _gaussian_of(entries[-1].event) == pytest.approx(sigma / measured, rel=REL)
        assert _gaussian_of(entries[-1].event) == pytest.approx(sigma / (2 * C), rel=REL)


def test_local_noise_std_that_ran_matches_the_spy() -> None:
    """The std the spy reads is the std of the noise actually added (4096 draws: 3 % tolerance)."""
    d = 4096
    mech, mech0 = _client_mech(z=1.3, noise="local"), _client_mech(z=0.0, noise="local")
    u = 1e6 * _unit(d, _g(5))
    noise = (
        mech.client_update(u, _cctx(0, d), {"dp-clip-norm": C})[0]
        - mech0.client_update(u, _cctx(0, d), {})[0]
    )
    assert float(noise.std()) == pytest.approx(mech.update_z * C / math.sqrt(M), rel=0.03)


# ---------------------------------------------------------------------------------------------------
# sketch + DP
# ---------------------------------------------------------------------------------------------------
SKETCH_D = 256
SKETCH_Z = 1.2


def _compressor(name: str, z: float) -> Any:
    cls = {
        "srht": SRHTCompressor,
        "gaussian_sketch": GaussianSketchCompressor,
        "count_sketch": CountSketchCompressor,
    }[name]
    kw = {"rows": 4} if name == "count_sketch" else {}
    return cls(ratio=0.25, clip_norm=C, noise_multiplier=z, **kw)


@pytest.mark.parametrize("name", ["srht", "gaussian_sketch", "count_sketch"])
def test_sketch_dp_clipped_sketch(name: str) -> None:
    """Sketch + DP: one client's clipped sketch (``encode`` without noise) moves by ≤ 2·g·C under replace-one,
    reached by ±(the operator's top singular direction) and opposite huge updates; added to or removed from
    the cohort's sum it moves it by ≤ g·C. The ``update_in_clear`` event is z·g·C (the std that ran) /
    measured = z/2, and the ``aggregate`` event (one reply) is z·g·C / measured add/remove = z."""
    clean, noisy = _compressor(name, 0.0), _compressor(name, SKETCH_Z)
    ctx = _cctx(0, SKETCH_D)
    op = clean.operator(seed=ctx.seed, server_round=ctx.server_round, dim=SKETCH_D)
    gain = clean.norm_gain(op)
    assert gain == (2.0 if name == "count_sketch" else 1.0)
    rt = op.sketch(torch.eye(SKETCH_D)).to(F64)  # (d, s): column i is R·e_i
    _, sv, vh = torch.linalg.svd(rt.T, full_matrices=True)
    top, null = vh[0], vh[-1]  # the most amplified direction (σ_max > 1) and one that R maps to 0
    assert float(sv[0]) > 1.0 and float(torch.linalg.vector_norm(rt.T @ null)) < 1e-4
    ups = [*_adversarial_vectors(SKETCH_D, C, seed=4), C * top, -C * top, 1e6 * top, -1e6 * null]

    def sketch(u: torch.Tensor, comp: Any = clean) -> torch.Tensor:
        return torch.from_numpy(comp.encode(u, ctx)["sketch"]).to(F64)

    ys = [sketch(u) for u in ups]
    replace = max(_dist(a, b) for a, b in itertools.combinations(ys, 2))
    add_remove = max(float(y.norm()) for y in ys)  # the sum of the others' sketches cancels
    cohort = torch.stack(ys[:5]).sum(0)
    add_remove = max(add_remove, *(_dist(cohort, cohort - y) for y in ys[:5]))
    _check_bound(replace, 2 * gain * C, f"{name} sketch, replace one")
    _check_bound(add_remove, gain * C, f"{name} sketch sum, add/remove one")

    # the std that ran: the noisy sketch minus the clean one, against the client's own standard normal draw
    u = ups[0]
    drawn = torch.randn(op.sketch_dim, generator=ctx.private_generator("sketch-dp-noise")).to(F64)
    diff = sketch(u, noisy) - sketch(u)
    sigma = float(diff @ drawn / (drawn @ drawn))
    assert sigma == pytest.approx(SKETCH_Z * gain * C, rel=1e-4)
    assert float(torch.linalg.vector_norm(diff - sigma * drawn)) < 1e-4 * float(diff.norm())

    acc = ClientLevelAccounting(
        noise_multiplier=SKETCH_Z,
        sampling="poisson",
        sampling_rate=M / N_CLIENTS,
        num_clients=N_CLIENTS,
        sample_size=int(M),
        delta=DELTA,
        accountant="pld",
    )
    mech = SketchDP(acc, C, name)
    mech.round_report(1, [{"partition-id": 0}])
    clear = mech.ledger.views["update_in_clear"]
    assert clear.relation == "replace_one"
    mult = _gaussian_of(clear.subjects[0][-1].event)
    assert mult == pytest.approx(SKETCH_Z * gain * C / replace, rel=REL)
    assert mult == pytest.approx(SKETCH_Z / 2, rel=REL)
    agg = mech.ledger.views["aggregate"]
    assert agg.relation == "add_or_remove_one" and isinstance(agg.entries[-1].event, E.PoissonSampledDpEvent)
    # one reply: the sum carries one sketch's noise z·g·C (n replies: √n times more, a conservative event)
    assert _gaussian_of(agg.entries[-1].event) == pytest.approx(SKETCH_Z * gain * C / add_remove, rel=REL)


# ---------------------------------------------------------------------------------------------------
# record level: DP-SGD, input perturbation, DPSGD-F
# ---------------------------------------------------------------------------------------------------
SGD_C = 0.05
SHAPE = (1, 8, 8)


def _vec(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(F64)


def _mlp(shape: tuple[int, ...], hidden: list[int], seed: int = 0) -> torch.nn.Module:
    model = build_model("mlp", {"hidden": hidden}, input_shape=shape, num_classes=3, seed=seed).double()
    with torch.no_grad():  # larger output weights: every layer's gradient of the adversarial example is far
        model.net[-1].weight.mul_(20.0)  # above its per-layer clip, so Opacus's 1e-6 stabiliser costs < 1e-7
    return model


def _record_ctx(model: torch.nn.Module, shape: tuple[int, ...], n: int) -> ClientContext:
    d = sum(p.numel() for p in model.parameters())
    return ClientContext(
        partition_id=0,
        server_round=1,
        seed=0,
        num_examples=n,
        global_vector=torch.zeros(d),
        layout=_layout(d),
        train=LocalTrainConfig(epochs=1, batch_size=64, lr=0.1),
        num_clients=4,
        expected_clients_per_round=2.0,
        state={},
        noise_key=5,
    )


def _dpsgd_sum(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, clipping: str) -> torch.Tensor:
    """The sum of clipped per-example gradients of one full-batch step, as ``train_dpsgd`` (Opacus) forms it:
    z = 0, plain SGD with lr = 1, one batch; Opacus divides the sum by the batch size n, so sum = n·(θ₀ −
    θ₁)."""
    work = copy.deepcopy(model)
    before = _vec(work)
    res = train_dpsgd(
        work,
        x,
        y,
        LocalTrainConfig(epochs=1, batch_size=64, lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=SGD_C,
        delta=DELTA,
        generator=_g(1),
        noise_generator=_g(2),
        clipping=clipping,
        poisson_sampling=False,
        accountant="rdp",
    )
    assert res.stats.steps == 1
    return (before - _vec(work)) * x.shape[0]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("clipping", ["flat", "per_layer"])
def test_dpsgd_sum_of_clipped_per_example_gradients(clipping: str, normal_spy: NormalSpy) -> None:
    """DP-SGD (Opacus through ``train_dpsgd``): adding or removing one example moves a step's sum of clipped
    per-example gradients by ≤ C, flat or per layer (L tensors at C/√L each); reached by a huge input with a
    wrong label. The records event of the round's row is ``_row_event(z, q, steps)``, whose multiplier is the
    std that ran (z·C) / measured distance."""
    model = _mlp(SHAPE, [32])
    g = _g(6)
    x = torch.randn(6, *SHAPE, generator=g, dtype=F64)
    y = torch.randint(0, 3, (6,), generator=g)
    v = _unit(math.prod(SHAPE), g).reshape(SHAPE)
    with torch.no_grad():
        logits = model(torch.stack([1e6 * v, -1e6 * v]))
    extra_x = [1e6 * v, -1e6 * v, 1e6 * v, torch.zeros(SHAPE, dtype=F64), x[0], 1e-6 * v]
    extra_y = [
        int(logits[0].argmin()),
        int(logits[1].argmin()),
        int(logits[0].argmax()),
        1,
        (int(y[0]) + 1) % 3,
        2,
    ]  # wrong labels, the predicted one (gradient ≈ 0), another label
    pool_x, pool_y = torch.cat([x, torch.stack(extra_x)]), torch.cat([y, torch.tensor(extra_y)])
    base = tuple(range(6))
    pairs = [(base, base[:i] + base[i + 1 :]) for i in base] + [
        (base, (*base, j)) for j in range(6, len(pool_x))
    ]
    measured = _worst(pairs, lambda idx: _dpsgd_sum(model, pool_x[list(idx)], pool_y[list(idx)], clipping))
    _check_bound(measured, SGD_C, f"DP-SGD sum ({clipping}), add/remove one example")

    z = 1.3
    mech = RecordLevelDP(
        RecordDPConfig(
            noise_multiplier=z,
            max_grad_norm=SGD_C,
            clipping=clipping,
            poisson_sampling=False,
            accountant="rdp",
        ),
        delta=DELTA,
        rounds=1,
    )
    normal_spy.calls.clear()
    _, met = mech.client_train(copy.deepcopy(model), x, y, _record_ctx(model, SHAPE, 6), {}, None)
    stds = normal_spy.stds()
    assert len(stds) == len(list(model.parameters())) and max(stds) == pytest.approx(min(stds), rel=1e-12)
    sigma = stds[0]
    assert sigma == pytest.approx(z * SGD_C, rel=1e-6)  # per layer too: the noise is z·‖(C/√L, …)‖ = z·C
    mech.round_report(1, [{**met, "partition-id": 0}])
    view = mech.ledger.views["records"]
    assert view.relation == "add_or_remove_one"
    event = view.subjects[0][-1].event
    assert event == _row_event(z, 1.0, 1)
    assert _gaussian_of(event) == pytest.approx(sigma / measured, rel=REL)
    # a Poisson row (z, q, steps): the sampled Gaussian inside has the same multiplier z
    assert _gaussian_of(_row_event(z, 0.25, 4)) == z


INPUT_B = 2.0
IN_SHAPE = (1, 4, 4)


def test_input_perturbation_replace_one_example(normal_spy: NormalSpy) -> None:
    """Input perturbation: the clipped feature matrix (``perturb_inputs`` with z = 0) moves by ≤ 2B when one
    example's features are replaced, reached by opposite huge rows; the records event (replace-one) is
    Gaussian(z) = std that ran (z·2B) / measured."""
    d = math.prod(IN_SHAPE)
    rows = torch.stack(_adversarial_vectors(d, INPUT_B, seed=7)).reshape(-1, *IN_SHAPE)
    k = rows.shape[0]

    def release(idx: tuple[int, ...]) -> torch.Tensor:
        x = rows[list(idx)]
        out = perturb_inputs(x, bound=INPUT_B, noise_multiplier=0.0, generator=_g(0))
        assert torch.equal(out, clip_rows(x, INPUT_B))
        return out

    measured = _worst(_replace(tuple(range(k)), k), release)
    _check_bound(measured, 2 * INPUT_B, "input perturbation, replace one example's features")

    z = 1.7
    model = _mlp(IN_SHAPE, [])
    mech = RecordLevelDP(
        RecordDPConfig(mechanism="input", noise_multiplier=z, feature_clip_norm=INPUT_B),
        delta=DELTA,
        rounds=2,
    )
    y = torch.arange(k) % 3
    normal_spy.calls.clear()
    _, met = mech.client_train(model, rows, y, _record_ctx(model, IN_SHAPE, k), {}, None)
    ((sigma, size),) = normal_spy.calls
    assert size == tuple(rows.shape) and sigma == pytest.approx(z * 2 * INPUT_B, rel=1e-12)
    mech.round_report(1, [{**met, "partition-id": 0}])
    view = mech.ledger.views["records"]
    assert view.relation == "replace_one"
    event = view.subjects[0][-1].event
    assert isinstance(event, E.GaussianDpEvent) and event.noise_multiplier == z
    assert _gaussian_of(event) == pytest.approx(sigma / measured, rel=REL)


DPSGDF_B = 2.0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dpsgd_f_mean_and_norm_histogram(normal_spy: NormalSpy, monkeypatch: pytest.MonkeyPatch) -> None:
    """DPSGD-F's two releases, add/remove one example: (1) the sum of clipped features under the private mean
    moves by ≤ B (``private_feature_transform`` with z = 0: sum = n·μ̃); (2) the histogram of ‖x_i − μ̃‖ moves
    by exactly one count (L2 1). The histogram is taken at a fixed, already released μ̃ (adaptive composition):
    the mean's noise is pinned so that μ̃ is the same on both neighbours, and the counts are read from the
    transform's own ``torch.bincount``. The two records events are std that ran (z_p·B, z_p) / measured."""
    d = math.prod(IN_SHAPE)
    rows = torch.stack(_adversarial_vectors(d, DPSGDF_B, seed=8)).reshape(-1, *IN_SHAPE)
    k, full = rows.shape[0], tuple(range(rows.shape[0]))
    pairs = _add_remove(full, k)

    def sum_release(idx: tuple[int, ...]) -> torch.Tensor:
        t, _ = private_feature_transform(
            rows[list(idx)], bound=DPSGDF_B, noise_multiplier=0.0, quantile=0.9, generator=_g(0)
        )
        return t.mean * len(idx)

    d_sum = _worst(pairs, sum_release)
    _check_bound(d_sum, DPSGDF_B, "DPSGD-F feature sum, add/remove one example")

    counts: list[torch.Tensor] = []
    real_bincount = torch.bincount

    def bincount_spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = real_bincount(*args, **kwargs)
        counts.append(out.clone())
        return out

    monkeypatch.setattr(torch, "bincount", bincount_spy)
    g = _g(9)
    targets = [
        torch.zeros(d, dtype=F64),
        sum_release(full) / k,
        3 * DPSGDF_B * _unit(d, g),
        0.4 * _unit(d, g),
    ]

    def hist_release(key: tuple[int, tuple[int, ...]]) -> torch.Tensor:
        ti, idx = key
        n = len(idx)
        normal_spy.planned[:] = [targets[ti] * n - sum_release(idx), torch.zeros(NUM_BINS, dtype=F64)]
        counts.clear()
        t, _ = private_feature_transform(
            rows[list(idx)], bound=DPSGDF_B, noise_multiplier=1.0, quantile=0.9, generator=_g(0)
        )
        assert torch.allclose(t.mean, targets[ti], atol=1e-9) and not normal_spy.planned and len(counts) == 1
        return counts[0].to(F64)

    d_hist = _worst([((ti, a), (ti, b)) for ti in range(len(targets)) for a, b in pairs], hist_release)
    _check_bound(d_hist, 1.0, "DPSGD-F norm histogram, add/remove one example")

    zp = 1.5
    model = _mlp(IN_SHAPE, [4])
    mech = RecordLevelDP(
        RecordDPConfig(
            noise_multiplier=1.1,
            feature_preprocessing="dpsgd_f",
            preprocessing_noise_multiplier=zp,
            feature_clip_norm=DPSGDF_B,
            poisson_sampling=False,
            accountant="rdp",
        ),
        delta=DELTA,
        rounds=1,
    )
    x = rows[:6]
    normal_spy.calls.clear()
    _, met = mech.client_train(model, x, torch.arange(6) % 3, _record_ctx(model, IN_SHAPE, 6), {}, None)
    (s_mean, size_mean), (s_hist, size_hist) = normal_spy.calls[:2]  # then Opacus's DP-SGD noise
    assert size_mean == (d,) and size_hist == (NUM_BINS,)
    mech.round_report(1, [{**met, "partition-id": 0}])
    view = mech.ledger.views["records"]
    assert view.relation == "add_or_remove_one"
    mean_event, hist_event, sgd_event = (e.event for e in view.subjects[0])
    assert isinstance(mean_event, E.GaussianDpEvent) and isinstance(hist_event, E.GaussianDpEvent)
    assert _gaussian_of(mean_event) == pytest.approx(s_mean / d_sum, rel=REL)
    assert _gaussian_of(hist_event) == pytest.approx(s_hist / d_hist, rel=REL)
    assert _gaussian_of(sgd_event) == 1.1
