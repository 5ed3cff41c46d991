"""Leakage from aggregates: K clients in one leakage experiment (in the clear or out of simulated SecAgg+),
and the attacks that work on an aggregate (cocktail_party, aggregate_labels; robbing_the_fed and
inverting_gradients are flagged ``works_on_aggregate`` too)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from attacks.base import INVERSION_ATTACKS, InversionAttack, ProtocolInfo, ServerView
from attacks.inversion._common import PayloadSimulator
from attacks.inversion.aggregate_labels import AggregateLabels, round_counts
from attacks.inversion.cocktail_party import (
    CocktailParty,
    fastica,
    first_dense_layer,
    gaussian_contrast_mean,
    spatial_differences,
    whiten,
)
from attacks.metrics import match_batch, psnr, score_reconstruction
from simulator.context import make_generator
from simulator.experiment import prepare_leakage
from simulator.experiment.leakage import client_payload, gradient_view, label_count_metrics, run_leakage
from simulator.models import MLP, SmallCNN
from simulator.scenario import ScenarioError, load_scenario
from simulator.scenario.leakage import LeakageConfig

SCENARIO = "scenarios/leakage_aggregate.toml"


def _aggregate_view(model: torch.nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> ServerView:
    """What the server holds after FedAvg over clients (x_k, y_k): the example-weighted mean of their
    gradients."""
    views = [gradient_view(model, x, y) for x, y in zip(xs, ys, strict=True)]
    w = torch.tensor([float(x.shape[0]) for x in xs])
    payload = (w[:, None] * torch.stack([v.payload for v in views])).sum(0) / w.sum()
    n = int(w.sum())
    proto = ProtocolInfo(
        kind="gradient", num_examples=n, batch_size=int(xs[0].shape[0]), num_clients=len(xs), aggregate="mean"
    )
    return ServerView(
        model=copy.deepcopy(model),
        payload=payload,
        protocol=proto,
        input_shape=tuple(xs[0].shape[1:]),
        num_classes=views[0].num_classes,
    )


# ---------------------------------------------------------------------------------------------------------
# flags, fields and the scenario section
# ---------------------------------------------------------------------------------------------------------


def test_defaults_keep_the_single_client_setting():
    p = ProtocolInfo(kind="gradient")
    assert p.num_clients == 1 and p.aggregate == "none"
    assert InversionAttack.works_on_aggregate is False
    on = {n for n in INVERSION_ATTACKS.names() if INVERSION_ATTACKS.get(n).factory.works_on_aggregate}
    assert {"inverting_gradients", "robbing_the_fed", "cocktail_party", "aggregate_labels"} <= on
    assert not on & {"analytic_fc", "dlg", "idlg", "soft_label"}
    cfg = LeakageConfig()
    assert cfg.clients == 1 and cfg.secure_aggregation is False and cfg.total_images == 1


def test_leakage_section_checks_clients():
    with pytest.raises(ScenarioError, match=r"leakage\.secure_aggregation"):
        load_scenario(SCENARIO, ["leakage.clients=1"])
    with pytest.raises(ScenarioError, match="do not split evenly"):
        load_scenario(SCENARIO, ["leakage.images=[1, 2, 3]"])
    s = load_scenario(SCENARIO, ["leakage.images=[1, 2, 3, 4, 5, 6, 7, 8]"])
    assert s.leakage.batch == 2 and s.leakage.total_images == 8


@pytest.mark.parametrize(
    "over",
    [['attacks.inversion.name="analytic_fc"'], ['compression.name="srht"', "compression.params.ratio=0.5"]],
)
def test_an_aggregate_refuses_attacks_and_compression_it_cannot_run(over, tmp_path):
    with pytest.raises(ScenarioError, match=r"leakage\.clients"):  # at load time
        load_scenario(SCENARIO, ["leakage.secure_aggregation=false", *over])
    # and when a scenario is built without the loader's checks
    base = load_scenario(SCENARIO, ["leakage.secure_aggregation=false"])
    assert base.attacks.inversion is not None
    bad = base.attacks.inversion.model_copy(update={"name": "analytic_fc", "params": {}})
    s = base.model_copy(update={"attacks": base.attacks.model_copy(update={"inversion": bad})})
    with pytest.raises(ScenarioError, match=r"leakage\.clients"):
        prepare_leakage(s)
    with pytest.raises(ScenarioError, match=r"leakage\.clients"):
        run_leakage(s, tmp_path)
    assert not (tmp_path / "summary.json").exists()


# ---------------------------------------------------------------------------------------------------------
# the aggregate the server sees
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["gradient", "update"])
def test_the_server_sees_the_weighted_mean_of_the_clients_payloads(protocol):
    over = [
        "leakage.clients=3",
        "leakage.num_images=2",
        f'leakage.protocol="{protocol}"',
        "leakage.local_steps=2",
        "leakage.batch_size=1",
        "leakage.lr=0.1",
        "model.params.hidden=[16]",
    ]
    clear = prepare_leakage(load_scenario(SCENARIO, [*over, "leakage.secure_aggregation=false"]))
    sec = prepare_leakage(load_scenario(SCENARIO, over))
    assert clear.truth_x.shape[0] == 6 and len(set(clear.indices)) == 6 and clear.indices == sec.indices
    p = clear.view.protocol
    assert (p.num_clients, p.aggregate, p.num_examples, p.batch_size) == (3, "mean", 6, 1)
    assert sec.view.protocol.aggregate == "secagg" and sec.aggregate["secure_aggregation"]["count"] == 3
    # the clients' own payloads, recomputed: client c holds images 2c, 2c+1
    s = load_scenario(SCENARIO, over)
    model = clear.view.model
    own = []
    for c in range(3):
        gen = make_generator(s.seed, "leakage", "client", *(() if c == 0 else (c,)))
        own.append(
            client_payload(
                model,
                clear.truth_x[2 * c : 2 * c + 2],
                clear.truth_y[2 * c : 2 * c + 2],
                cfg=s.leakage,
                generator=gen,
            )
        )
    mean = torch.stack(own).mean(0)
    assert torch.allclose(clear.view.payload, mean, atol=1e-7)
    bound = sec.aggregate["secure_aggregation"]["max_abs_error_bound"]
    assert 0 < float((sec.view.payload - mean).abs().max()) <= bound + 1e-7
    if protocol == "gradient":  # equal counts: the mean of the clients' mean gradients is the pooled gradient
        pooled = gradient_view(model, clear.truth_x, clear.truth_y).payload
        assert torch.allclose(clear.view.payload, pooled, atol=1e-6)


def test_one_client_is_the_single_client_experiment():
    s = load_scenario(SCENARIO, ["leakage.clients=1", "leakage.secure_aggregation=false"])
    case = prepare_leakage(s)
    assert (
        case.aggregate is None
        and case.view.protocol.num_clients == 1
        and case.view.protocol.aggregate == "none"
    )
    direct = client_payload(
        case.view.model,
        case.truth_x,
        case.truth_y,
        cfg=s.leakage,
        generator=make_generator(s.seed, "leakage", "client"),
    )
    assert torch.equal(case.view.payload, direct)


# ---------------------------------------------------------------------------------------------------------
# aggregate_labels
# ---------------------------------------------------------------------------------------------------------


def test_round_counts_sum_to_the_total():
    c = round_counts(torch.tensor([2.6, 1.3, -0.2, 0.3]), 4)
    assert c.tolist() == [3, 1, 0, 0]
    assert int(round_counts(torch.tensor([0.2, 0.2, 0.2]), 7).sum()) == 7


def _cohort(seed: int, clients: int, per: int, classes: int = 10):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.rand(per, 1, 8, 8, generator=g) for _ in range(clients)]
    ys = [torch.randint(0, classes, (per,), generator=g) for _ in range(clients)]
    return xs, ys


def test_counts_are_exact_when_the_outputs_are_uniform():
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, hidden=[32])
    with torch.no_grad():  # a zero last layer: softmax exactly 1/C for every input, so p̄ is known exactly
        model.net[-1].weight.zero_()
        model.net[-1].bias.zero_()
    xs, ys = _cohort(1, clients=3, per=5)
    view = _aggregate_view(model, xs, ys)
    rec = AggregateLabels(prior="uniform").reconstruct(view)
    truth = torch.bincount(torch.cat(ys), minlength=10)
    est = torch.tensor(rec.info["count_estimates"], dtype=torch.float64)
    assert torch.allclose(est, truth.double(), atol=1e-4)  # exact up to float32 round-off, before rounding
    assert rec.info["label_counts"] == truth.tolist() and rec.images.shape == (0, 1, 8, 8)


@pytest.mark.parametrize("source", ["bias", "weight"])
def test_counts_of_an_untrained_mlp_cohort(source):
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, hidden=[32])
    xs, ys = _cohort(2, clients=4, per=4)
    view = _aggregate_view(model, xs, ys)
    rec = AggregateLabels(source=source, prior="dummy").reconstruct(view)
    m = label_count_metrics(rec.labels, torch.cat(ys), 10)
    assert m["label_count_l1"] == 0 and m["label_count_accuracy"] == 1.0
    assert rec.info["num_clients"] == 4 and rec.info["source"] == source


def test_aggregate_labels_in_the_experiment(tmp_path):
    s = load_scenario(SCENARIO, ['attacks.inversion.name="aggregate_labels"'])
    summary = run_leakage(s, tmp_path)
    inv, pay = summary["inversion"], summary["payload"]
    assert inv["label_count_l1"] == 0 and inv["label_count_accuracy"] == 1.0 and inv["label_accuracy"] == 1.0
    assert sum(inv["label_counts_true"]) == 16 and inv["matched"] == 0  # labels only: no image matched
    assert pay["clients"] == 4 and pay["aggregate"] == "secagg" and pay["num_examples"] == 16
    sa = pay["cohort"]["secure_aggregation"]
    assert sa["count"] == 4 and sa["max_weight"] == 4.0 and sa["num_clipped"] == 0
    assert json.loads((tmp_path / "summary.json").read_text())["payload"]["cohort"]["clients"] == 4
    assert (tmp_path / "reconstruction.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------------------------
# cocktail_party
# ---------------------------------------------------------------------------------------------------------


def test_gaussian_contrast_mean():
    assert gaussian_contrast_mean("logcosh") == pytest.approx(0.374567207, abs=1e-8)
    assert gaussian_contrast_mean("exp") == pytest.approx(-(0.5**0.5), abs=1e-12)


def test_fastica_separates_like_sklearn():
    sk = pytest.importorskip("sklearn.decomposition")
    g = torch.Generator().manual_seed(0)
    k, n = 4, 4000
    s = torch.distributions.Laplace(0.0, 1.0).sample((k, n)).double()
    s = s[:, torch.randperm(n, generator=g)]
    a = torch.randn(6, k, generator=g, dtype=torch.float64)  # 6 mixtures of 4 sources
    x = a @ s
    z, _, _ = whiten(x, k)
    assert torch.allclose(z @ z.T / (n - 1), torch.eye(k, dtype=z.dtype), atol=1e-8)
    u, iters, ok = fastica(z, contrast="logcosh", generator=torch.Generator().manual_seed(1))
    assert ok and iters < 200
    ours = u @ z

    def best_corr(est, ref):
        c = torch.corrcoef(torch.cat([est, ref]))[: est.shape[0], est.shape[0] :].abs()
        return c.max(dim=1).values

    assert float(best_corr(ours, s).min()) > 0.98  # every source found, up to sign and scale
    ref = (
        sk.FastICA(
            n_components=k, whiten="unit-variance", fun="logcosh", random_state=0, max_iter=1000, tol=1e-8
        )
        .fit_transform(x.T.numpy())
        .T
    )
    assert float(best_corr(ours, torch.from_numpy(ref)).min()) > 0.999  # the same solution as scikit-learn


def test_spatial_differences_are_a_linear_filter():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(3, 1 * 5 * 4, generator=g, dtype=torch.float64)
    mix = torch.randn(7, 3, generator=g, dtype=torch.float64)
    d = spatial_differences(mix @ imgs, (1, 5, 4))
    assert d.shape == (7, 5 * 3 + 4 * 4)
    assert torch.allclose(d, mix @ spatial_differences(imgs, (1, 5, 4)))


def test_cocktail_party_refuses_models_without_a_first_dense_layer():
    cnn = SmallCNN((1, 28, 28), 10)
    with pytest.raises(ValueError, match="fully connected on the flattened"):
        first_dense_layer(cnn, (1, 28, 28))
    view = gradient_view(cnn, torch.rand(2, 1, 28, 28), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="registered 'mlp'"):
        CocktailParty().reconstruct(view)
    assert first_dense_layer(MLP((1, 28, 28), 10), (1, 28, 28)) == ("net.1", True)


def test_one_image_is_recovered_exactly_by_the_bias_ratio():
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, hidden=[16])
    x = torch.rand(1, 1, 8, 8)
    rec = CocktailParty().reconstruct(gradient_view(model, x, torch.tensor([3])))
    assert rec.images.shape == (1, 1, 8, 8) and rec.info["bias_scaled"] == 1
    assert float(psnr(rec.images, x)[0]) > 60


def test_cocktail_party_separates_a_secure_aggregate_of_4_clients(tmp_path):
    s = load_scenario(SCENARIO)  # 4 clients × 4 mnist5k digits, FedSGD, SecAgg+, untrained MLP
    summary = run_leakage(s, tmp_path)
    inv = summary["inversion"]
    info = inv["attack_info"]
    assert info["sources"] == 16 and info["bias_scaled"] == 16 and summary["payload"]["aggregate"] == "secagg"
    assert inv["matched"] == 16 and sorted(inv["order"]) == list(range(16))  # one-to-one Hungarian matching
    # measured 39.15 dB mean (SSIM 0.96), 8 of 16 digits >= 40 dB; the batch-mean image scores about 12 dB
    assert inv["psnr"] > 33.0
    case = prepare_leakage(s)
    base = psnr(case.truth_x.mean(0, keepdim=True).expand_as(case.truth_x), case.truth_x).mean()
    assert inv["psnr"] > float(base) + 18.0
    # FastICA on the pixels alone, without the refinement (the paper's plain setting): far lower
    plain = CocktailParty(domain="pixels", contrast="logcosh", refine_iterations=0).reconstruct(case.view)
    m = score_reconstruction(plain, case.truth_x, case.truth_y)
    assert m["psnr"] < inv["psnr"] - 15.0
    assert (match_batch(plain.images, case.truth_x) >= 0).all()


# ---------------------------------------------------------------------------------------------------------
# robbing_the_fed on a secure aggregate, and clients that refuse the model
# ---------------------------------------------------------------------------------------------------------


def test_robbing_the_fed_reads_a_secure_aggregate_once_its_imprint_outgrows_the_quantisation(tmp_path):
    base = [
        "leakage.clients=4",
        "leakage.num_images=8",
        "leakage.secure_aggregation=true",
        "leakage.public_images=300",
    ]
    # scale 1e-2 (the default before the imprint was made loud) leaves imprint gradients of ~1e-5, the size of
    # SecAgg+'s quantisation error (~6e-6 here): measured 0 of 32 digits; the default scale (1e-4) and gain 1
    # at scale 1e-2 both make them 100 times larger
    rtf = "scenarios/robbing_the_fed.toml"
    faint = run_leakage(
        load_scenario(rtf, [*base, "attacks.inversion.params.scale=0.01"]), tmp_path / "faint"
    )
    loud = run_leakage(load_scenario(rtf, base), tmp_path / "loud")
    gain = run_leakage(
        load_scenario(
            rtf, [*base, "attacks.inversion.params.scale=0.01", "attacks.inversion.params.gain=1.0"]
        ),
        tmp_path / "gain",
    )
    assert faint["inversion"]["recovered_fraction"] < 0.1
    assert loud["inversion"]["attack_info"]["scale"] == 1e-4 and loud["payload"]["aggregate"] == "secagg"
    assert loud["inversion"]["recovered_fraction"] > 0.6 and gain["inversion"]["recovered_fraction"] > 0.6


def test_when_every_client_refuses_the_model_nothing_is_aggregated(tmp_path):
    s = load_scenario(
        "scenarios/inversion_defense_pipeline.toml",
        [
            "leakage.clients=2",
            "leakage.num_images=4",
            "leakage.batch_size=4",
            "leakage.public_images=300",
            "leakage.secure_aggregation=true",
        ],
    )
    summary = run_leakage(s, tmp_path)
    assert "imprint" in summary["inversion"]["refused"] and summary["inversion"]["images_at_risk"] == 8
    assert summary["payload"]["cohort"]["clients_refused"] == 2 and summary["payload"]["nonzero"] == 0


# ---------------------------------------------------------------------------------------------------------
# the server's simulation of an aggregate of FedAvg updates (inverting_gradients and the other matchers)
# ---------------------------------------------------------------------------------------------------------


def test_the_simulated_aggregate_of_fedavg_updates_is_the_mean_of_the_clients_own_updates():
    over = [
        "leakage.clients=2",
        "leakage.num_images=3",
        'leakage.protocol="update"',
        "leakage.local_steps=4",  # a whole-batch step each (batch_size unset): the client's shuffle is moot
        "leakage.lr=0.5",
        "leakage.secure_aggregation=false",
        "model.params.hidden=[16]",
    ]
    case = prepare_leakage(load_scenario(SCENARIO, over))
    p = case.view.protocol
    assert (p.num_clients, p.num_examples, p.batch_size, p.total_steps) == (2, 6, 3, 4)
    sim = PayloadSimulator(case.view)
    assert sim.split and sim.steps == 4
    got = sim.simulate(case.truth_x, case.truth_y)
    for g, t in zip(got, sim.target, strict=True):
        torch.testing.assert_close(g, t, atol=1e-6, rtol=1e-5)  # the true images give the real aggregate
    # local steps over the pooled batch (what the simulator did before) are another update altogether
    pooled = PayloadSimulator(dataclasses.replace(case.view, protocol=dataclasses.replace(p, num_clients=1)))
    far = pooled.simulate(case.truth_x, case.truth_y)
    dist = sum(float(((a - t) ** 2).sum()) for a, t in zip(far, sim.target))
    assert dist > 1e-4 * sum(float((t**2).sum()) for t in sim.target)
    with pytest.raises(ValueError, match="equal shares"):
        sim.simulate(case.truth_x[:5], case.truth_y[:5])


def test_fedsgd_gradients_of_an_aggregate_are_split_only_through_batchnorm():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(4, 1, 6, 6, generator=g), torch.tensor([0, 1, 2, 3])
    for bn, split in ((False, False), (True, True)):
        layers = [torch.nn.Conv2d(1, 4, 3), *([torch.nn.BatchNorm2d(4)] if bn else [])]
        model = torch.nn.Sequential(*layers, torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 4))
        halves = [gradient_view(model, x[:2], y[:2]), gradient_view(model, x[2:], y[2:])]
        proto = ProtocolInfo(kind="gradient", num_examples=4, batch_size=2, num_clients=2, aggregate="mean")
        view = dataclasses.replace(
            halves[0], payload=(halves[0].payload + halves[1].payload) / 2, protocol=proto
        )
        sim = PayloadSimulator(view)
        assert sim.split is split
        for a, t in zip(sim.simulate(x, y), sim.target, strict=True):
            torch.testing.assert_close(a, t, atol=1e-6, rtol=1e-5)


def test_the_secagg_rtf_scenario_reads_16_clients_through_secure_aggregation(tmp_path):
    summary = run_leakage(load_scenario("scenarios/secagg_rtf.toml"), tmp_path)
    inv, pay = summary["inversion"], summary["payload"]
    assert pay["clients"] == 16 and pay["aggregate"] == "secagg" and pay["num_examples"] == 64
    assert pay["cohort"]["secure_aggregation"]["num_clipped"] == 0
    # measured 0.66 (42 of 64; (1 − 1/128)^63 ≈ 0.61 of the digits are alone in a bin of equal mass)
    assert inv["recovered_fraction"] >= 0.6 and inv["attack_info"]["scale"] == 1e-4
