"""Robbing the Fed (Fowl et al., ICLR 2022): the imprint math, public-only calibration, recovery on 64
mnist5k digits, the scenario; and the metrics it relies on (fewer reconstructions than images,
recovered fraction against a brute force)."""

import copy
import inspect
import itertools
import math
from statistics import NormalDist

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attacks.inversion.robbing_the_fed  # noqa: F401  (registers the attack)
import defenses.privacy.model_inspection  # noqa: F401  (registers the defense used by the scenarios)
from attacks.base import INVERSION_ATTACKS, ProtocolInfo, PublicData, Reconstruction, ServerView
from attacks.inversion.robbing_the_fed import ENCODER_BIAS, RobbingTheFed, bin_offsets, measurement_vector
from attacks.metrics import UNMATCHED_FILL, match_batch, psnr, recovered_fraction, score_reconstruction
from simulator.experiment import gradient_view
from simulator.flat import layout_of, model_vector
from simulator.models import build_model
from simulator.training import LocalTrainConfig, train_local

SHAPE = (1, 6, 6)


def _update_view(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float, steps: int, batch_size: int
) -> ServerView:
    w0 = model_vector(model)
    victim = copy.deepcopy(model)
    train_local(
        victim,
        x,
        y,
        LocalTrainConfig(epochs=steps, batch_size=batch_size, lr=lr, max_steps=steps),
        generator=torch.Generator().manual_seed(0),
    )
    return ServerView(
        model=copy.deepcopy(model),
        payload=model_vector(victim) - w0,
        protocol=ProtocolInfo(
            kind="update",
            lr=lr,
            local_steps=steps,
            local_epochs=steps,
            batch_size=batch_size,
            num_examples=int(x.shape[0]),
        ),
        input_shape=tuple(x.shape[1:]),
        num_classes=10,
    )


def _random_public(n: int, seed: int) -> PublicData:
    """Random images whose brightness spreads over (0.1, 0.9)."""
    g = torch.Generator().manual_seed(seed)
    level = 0.1 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
    x = (level + 0.1 * torch.randn(n, *SHAPE, generator=g)).clamp(0, 1)
    return PublicData(x=x, y=torch.zeros(n, dtype=torch.long), source="random")


def _bin_of(attack: RobbingTheFed, x: torch.Tensor) -> torch.Tensor:
    """Bin index of each image (test side): i with o_i < m ≤ o_{i+1}."""
    m = x.double().flatten(1) @ attack.vector
    return (m[:, None] > attack.offsets[None, :]).sum(1) - 1


# ------------------------------------------------------------------------------------------- the imprint math


def test_a_lone_image_comes_back_exactly_and_two_in_a_bin_give_their_gradient_weighted_mixture():
    torch.manual_seed(0)
    attack = RobbingTheFed(bins=16)
    model = build_model("mlp", {"hidden": [32]}, input_shape=SHAPE, num_classes=10, seed=0)
    attack.prepare(_random_public(400, 1), model=model, input_shape=SHAPE, num_classes=10)
    g = torch.Generator().manual_seed(2)
    singles = (
        torch.tensor([0.2, 0.45, 0.7]).view(3, 1, 1, 1) + 0.1 * torch.randn(3, *SHAPE, generator=g)
    ).clamp(0, 1)
    a = (0.85 + 0.1 * torch.randn(*SHAPE, generator=g)).clamp(0, 1)
    b = a.flatten()[torch.randperm(a.numel(), generator=g)].view(SHAPE)  # same pixels, so the same brightness
    x = torch.cat([singles, a[None], b[None]])
    y = torch.tensor([1, 2, 3, 4, 5])
    bins = _bin_of(attack, x)
    assert len(set(bins[:3].tolist())) == 3 and bins[3] == bins[4] and int(bins[3]) not in bins[:3].tolist()

    sent = attack.server_model(model)
    r = attack.reconstruct(gradient_view(sent, x, y))
    assert r.info["bins_hit"] == 4 and r.images.shape == (4, *SHAPE)
    by_bin = dict(zip(r.info["bin_indices"], r.images))
    for i in range(3):
        assert float(psnr(by_bin[int(bins[i])][None], x[i][None])[0]) >= 60.0

    # c_j: image j's share of the bias gradient of any unit it activates (unit 0: every image)
    c = []
    for j in range(5):
        loss = F.cross_entropy(sent(x), y, reduction="none")[j] / 5
        c.append(float(torch.autograd.grad(loss, sent.imprint.encoder.bias)[0][0]))
    mix = ((c[3] * x[3] + c[4] * x[4]) / (c[3] + c[4])).clamp(0, 1)
    got = by_bin[int(bins[3])]
    assert float(psnr(got[None], mix[None])[0]) >= 60.0
    assert float(psnr(got[None], x[3][None])[0]) < 30.0 and float(psnr(got[None], x[4][None])[0]) < 30.0


def test_one_step_update_is_read_like_a_gradient_and_several_steps_are_refused():
    attack = RobbingTheFed(bins=32)
    model = build_model("mlp", {"hidden": [32]}, input_shape=SHAPE, num_classes=10, seed=0)
    attack.prepare(_random_public(400, 1), model=model, input_shape=SHAPE, num_classes=10)
    sent = attack.server_model(model)
    x = _random_public(8, 5).x
    y = torch.arange(8)
    grad = attack.reconstruct(gradient_view(sent, x, y)).images
    step = attack.reconstruct(_update_view(sent, x, y, lr=0.1, steps=1, batch_size=8)).images
    assert grad.shape[0] >= 4 and grad.shape == step.shape
    assert float(psnr(step, grad).min()) >= 60.0  # the lr and the batch mean cancel in the ratio
    with pytest.raises(ValueError, match="one-step update"):
        attack.reconstruct(_update_view(sent, x, y, lr=0.1, steps=4, batch_size=2))
    multi = RobbingTheFed(bins=32, multi_step=True)
    multi.prepare(_random_public(400, 1), model=model, input_shape=SHAPE, num_classes=10)
    r = multi.reconstruct(_update_view(sent, x, y, lr=0.1, steps=4, batch_size=2))
    assert r.info["exact"] is False and r.images.shape[1:] == SHAPE


def test_an_honest_model_or_a_raw_sketch_is_refused_with_a_clear_error():
    attack = RobbingTheFed(bins=8)
    model = build_model("mlp", {"hidden": [16]}, input_shape=SHAPE, num_classes=10, seed=0)
    x, y = _random_public(4, 0).x, torch.arange(4)
    with pytest.raises(ValueError, match="no imprint layer"):
        attack.reconstruct(gradient_view(model, x, y))
    with pytest.raises(RuntimeError, match="prepare"):
        attack.server_model(model)
    with pytest.raises(ValueError, match="public data"):
        attack.prepare(None, model=model, input_shape=SHAPE, num_classes=10)


def test_the_imprint_block_keeps_the_model_working():
    # the residual back-projection moves each pixel by at most gain·(measurement range): same predictions
    attack = RobbingTheFed(bins=64)
    model = build_model("cnn", {}, input_shape=SHAPE, num_classes=10, seed=0)
    pub = _random_public(300, 1)
    attack.prepare(pub, model=model, input_shape=SHAPE, num_classes=10)
    sent = attack.server_model(model)
    assert set(layout_of(sent).names) >= {
        "imprint.encoder.weight",
        "imprint.encoder.bias",
        "imprint.decoder.weight",
        "imprint.decoder.bias",
    }
    assert [n for n in layout_of(sent).names if n.startswith("model.")] == [
        f"model.{n}" for n in layout_of(model).names
    ]
    w = sent.imprint.encoder.weight
    assert torch.equal(w, w[:1].expand_as(w))  # every row is the measurement
    with torch.no_grad():
        assert float((sent(pub.x) - model(pub.x)).abs().max()) < 1e-3
        assert torch.equal(sent(pub.x).argmax(1), model(pub.x).argmax(1))
    assert model_vector(model).equal(model_vector(attack.server_model(model).model))  # a copy, untouched


# ----------------------------------------------------------------------------------- calibration: public only


def test_bins_are_equal_mass_quantiles_of_the_public_measurement_only():
    attack = RobbingTheFed(bins=10)
    model = build_model("mlp", {"hidden": [8]}, input_shape=SHAPE, num_classes=10, seed=0)
    pub = _random_public(1000, 3)
    attack.prepare(pub, model=model, input_shape=SHAPE, num_classes=10)
    m = pub.x.double().flatten(1) @ attack.vector
    counts = torch.bincount(_bin_of(attack, pub.x), minlength=10)
    assert counts.tolist() == pytest.approx([100] * 10, abs=1)  # each bin holds 1/K of the public data
    assert float(attack.offsets[0]) < 0.0 <= float(m.min())  # unit 0 fires for every image in [0, 1]
    other = RobbingTheFed(bins=10)
    other.prepare(_random_public(1000, 4), model=model, input_shape=SHAPE, num_classes=10)
    assert not torch.allclose(other.offsets, attack.offsets)  # the bins follow the attacker's data

    gauss = bin_offsets(m, 4, placement="gaussian", lower_bound=0.0)
    nd = NormalDist(float(m.mean()), float(m.std()))
    assert gauss[1:].tolist() == pytest.approx([nd.inv_cdf(q) for q in (0.25, 0.5, 0.75)], rel=1e-9)
    rnd = measurement_vector(36, kind="random", seed=7)
    assert float(rnd.norm()) == pytest.approx(1.0) and torch.equal(
        rnd, measurement_vector(36, kind="random", seed=7)
    )

    # the threat model in the signatures: prepare sees public data, reconstruct the ServerView and nothing
    # else
    assert list(inspect.signature(RobbingTheFed.reconstruct).parameters) == ["self", "view"]
    assert RobbingTheFed.malicious_server and RobbingTheFed.needs_public_data
    assert isinstance(INVERSION_ATTACKS.create("robbing_the_fed", {"bins": 64}), RobbingTheFed)
    with pytest.raises(Exception, match="bins"):
        INVERSION_ATTACKS.create("robbing_the_fed", {"bins": 1})


# ---------------------------------------------------------------------------------------- 64 mnist5k digits


@pytest.fixture(scope="module")
def mnist():
    from simulator.data import DATASETS

    return DATASETS.create("mnist5k", {})


@pytest.mark.parametrize(
    "model_name,placement,measurement", [("cnn", "quantile", "brightness"), ("mlp", "gaussian", "random")]
)
def test_64_mnist_digits_with_128_bins(mnist, model_name, placement, measurement):
    # measured: 0.66 (cnn, quantile, brightness) and 0.67 (mlp, gaussian, random) of the digits at >= 40 dB
    # ((1−1/K)^(B−1) ≈ 0.61 are alone in a bin of equal mass); nearly all of them exact to > 100 dB
    perm = torch.randperm(len(mnist), generator=torch.Generator().manual_seed(0))
    victim, public = perm[:64], perm[64:1064]
    model = build_model(model_name, {}, input_shape=mnist.input_shape, num_classes=10, seed=1)
    attack = RobbingTheFed(bins=128, placement=placement, measurement=measurement)
    attack.prepare(
        PublicData(mnist.x[public], mnist.y[public]),
        model=model,
        input_shape=mnist.input_shape,
        num_classes=10,
    )
    x, y = mnist.x[victim], mnist.y[victim]
    r = attack.reconstruct(gradient_view(attack.server_model(model), x, y))
    frac = recovered_fraction(r.images, x)
    assert frac >= 0.5
    scored = score_reconstruction(r, x, y)
    assert scored["recovered_fraction"] == frac
    exact = torch.tensor([p["psnr"] for p in scored["per_image"] if p["recovered"]])
    assert (
        float(exact.median()) >= 60.0
    )  # lone digits are exact (a bin whose second digit has a tiny c_j: ≈ 45 dB)
    lone = int((torch.bincount(_bin_of(attack, x), minlength=128) == 1).sum())
    assert frac * 64 == pytest.approx(lone, abs=2)  # recovered ≈ digits alone in their bin


def test_scenario_file_runs_through_the_leakage_experiment(mnist, monkeypatch):
    from simulator.data import DATASETS
    from simulator.experiment import attack_update, prepare_leakage
    from simulator.scenario import ScenarioError, load_scenario

    create = DATASETS.create
    monkeypatch.setattr(
        DATASETS, "create", lambda name, params: mnist if name == "mnist5k" else create(name, params)
    )
    s = load_scenario("scenarios/robbing_the_fed.toml")
    attack = INVERSION_ATTACKS.create(s.attacks.inversion.name, s.attacks.inversion.params)
    case = prepare_leakage(s, attack)
    assert case.refused is None and ENCODER_BIAS in layout_of(case.view.model).names
    public_idx = set(range(5000)) - set(case.indices)
    assert len(public_idx) == 5000 - 64
    _, m = attack_update(attack, case.view, case.truth_x, case.truth_y)
    assert m["recovered_fraction"] >= 0.5
    with pytest.raises(ScenarioError, match="malicious"):
        load_scenario("scenarios/robbing_the_fed.toml", ['leakage.server="honest"'])


# ---------------------------------------------------------------------------------------------------- metrics


def test_fewer_reconstructions_than_images_are_scored_against_mid_grey():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(4, 1, 8, 8, generator=g)
    recon = torch.stack([truth[2], truth[0]])  # two of the four, out of order
    order = match_batch(recon, truth)
    assert order.tolist() == [1, -1, 0, -1]
    out = score_reconstruction(Reconstruction(images=recon), truth, None)
    grey = torch.full_like(truth[:1], UNMATCHED_FILL)
    for i in (1, 3):
        assert out["per_image"][i]["matched"] == -1 and not out["per_image"][i]["recovered"]
        assert out["per_image"][i]["psnr"] == pytest.approx(float(psnr(grey, truth[i : i + 1])[0]))
    assert math.isinf(out["per_image"][0]["psnr"]) and out["per_image"][0]["recovered"]
    assert out["recovered_fraction"] == 0.5 and out["matched"] == 2
    empty = score_reconstruction(Reconstruction(images=torch.zeros(0, 1, 8, 8)), truth, None)
    assert empty["recovered_fraction"] == 0.0 and empty["order"] == [-1] * 4


def _brute_force_recovered(recon: torch.Tensor, truth: torch.Tensor, threshold_db: float) -> float:
    """Every one-to-one assignment; the one of least total MSE; share of true images ≥ threshold."""
    n, r = truth.shape[0], recon.shape[0]
    mse = ((truth[:, None] - recon[None]) ** 2).flatten(2).mean(2).double()
    best, best_pairs = math.inf, []
    k = min(n, r)
    for rows in itertools.combinations(range(n), k):
        for cols in itertools.permutations(range(r), k):
            cost = sum(float(mse[i, j]) for i, j in zip(rows, cols))
            if cost < best:
                best, best_pairs = cost, list(zip(rows, cols))
    hits = sum(10 * math.log10(1 / max(float(mse[i, j]), 1e-300)) >= threshold_db for i, j in best_pairs)
    return hits / n


@pytest.mark.parametrize("n_truth,n_recon", [(4, 4), (5, 3), (3, 5)])
def test_recovered_fraction_matches_a_brute_force(n_truth, n_recon):
    g = torch.Generator().manual_seed(n_truth * 10 + n_recon)
    truth = torch.rand(n_truth, 1, 5, 5, generator=g)
    recon = torch.rand(n_recon, 1, 5, 5, generator=g)
    noise = torch.tensor([1e-4, 3e-3, 0.02, 0.2, 1e-6])  # PSNR ≈ 80, 50, 34, 14, 120 dB
    for j in range(min(n_truth, n_recon)):
        recon[j] = truth[(j + 1) % n_truth] + noise[j] * torch.randn(1, 5, 5, generator=g)
    for thr in (20.0, 40.0, 60.0):
        assert recovered_fraction(recon, truth, threshold_db=thr) == _brute_force_recovered(recon, truth, thr)
    assert 0.0 < recovered_fraction(recon, truth) < 1.0
