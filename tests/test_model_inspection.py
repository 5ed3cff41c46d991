"""Client-side model inspection (Guo et al., TPAMI 2025, stage 3): refuses Robbing the Fed's modified model,
accepts the honest models of simulator.models (untrained and trained)."""

import copy

import pytest
import torch
from torch import nn

import defenses.privacy.model_inspection  # noqa: F401  (registers the defense)
from attacks.base import PublicData
from attacks.inversion.robbing_the_fed import RobbingTheFed
from defenses.base import CLIENT_DEFENSES
from defenses.privacy.model_inspection import ModelInspection, architecture_problems, parallel_row_fraction
from simulator.context import ClientContext
from simulator.flat import Layout, layout_of, model_vector
from simulator.models import build_model
from simulator.training import LocalTrainConfig, train_local

SHAPE = (1, 28, 28)


def _ctx(agreed: nn.Module) -> ClientContext:
    """A client's context in which ``agreed`` is the architecture the federation agreed on."""
    layout = layout_of(agreed)
    return ClientContext(
        partition_id=0,
        server_round=1,
        seed=0,
        num_examples=32,
        global_vector=model_vector(agreed, layout),
        layout=layout,
        train=LocalTrainConfig(),
        num_clients=1,
        expected_clients_per_round=1.0,
    )


def _data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Blurry random images with a learnable label (brightest quadrant)."""
    g = torch.Generator().manual_seed(seed)
    x = nn.functional.avg_pool2d(torch.rand(n, *SHAPE, generator=g), 5, 1, 2)
    q = torch.stack(
        [
            x[:, 0, :14, :14].mean((1, 2)),
            x[:, 0, :14, 14:].mean((1, 2)),
            x[:, 0, 14:, :14].mean((1, 2)),
            x[:, 0, 14:, 14:].mean((1, 2)),
        ],
        1,
    )
    return x, q.argmax(1)


def _rtf_model(model: nn.Module, bins: int = 128) -> nn.Module:
    x, y = _data(500, seed=1)
    attack = RobbingTheFed(bins=bins)
    attack.prepare(PublicData(x, y), model=model, input_shape=SHAPE, num_classes=10)
    return attack.server_model(model)


def test_rtf_model_is_refused_by_both_checks():
    honest = build_model("cnn", {}, input_shape=SHAPE, num_classes=10, seed=0)
    sent = _rtf_model(honest)
    ctx = _ctx(honest)
    reason = ModelInspection().inspect(sent, ctx)
    assert reason is not None
    assert "nested under 'model.'" in reason and "imprint.encoder.weight" in reason
    assert "imprint.encoder 100%" in reason and "imprint.decoder 100%" in reason
    only_params = ModelInspection(architecture=False).inspect(sent, ctx)
    assert only_params is not None and "architecture" not in only_params and "imprint.encoder" in only_params
    only_arch = ModelInspection(parameters=False).inspect(sent, ctx)
    assert only_arch is not None and "imprint-like" not in only_arch
    assert ModelInspection(architecture=False, parameters=False).inspect(sent, ctx) is None


def test_an_imprint_hidden_under_the_agreed_names_is_caught_by_the_parameter_check():
    # a stealthier server keeps every name and shape: it rewrites the MLP's first layer as an imprint layer
    honest = build_model("mlp", {}, input_shape=SHAPE, num_classes=10, seed=0)
    forged = copy.deepcopy(honest)
    first = forged.net[1]
    with torch.no_grad():
        first.weight.copy_(torch.full_like(first.weight, 1.0 / first.weight.shape[1]))
        first.bias.copy_(-torch.linspace(0.0, 0.5, first.bias.numel()))
    ctx = _ctx(honest)
    assert architecture_problems(layout_of(forged), ctx.layout) == []
    reason = ModelInspection().inspect(forged, ctx)
    assert reason is not None and reason.startswith("imprint-like") and "net.1 100%" in reason
    # a few duplicated rows stay under the fraction; more than 10 % of the rows are flagged
    few, many = copy.deepcopy(honest), copy.deepcopy(honest)
    with torch.no_grad():
        few.net[1].weight[1:11] = few.net[1].weight[0]  # 11 of 200 rows
        many.net[1].weight[1:30] = -2.0 * many.net[1].weight[0]  # 30 of 200, sign-flipped and scaled
    assert ModelInspection().inspect(few, ctx) is None
    assert "net.1 15%" in (ModelInspection().inspect(many, ctx) or "")


@pytest.mark.parametrize("name", ["mlp", "cnn", "lenet"])
def test_honest_models_are_accepted_untrained_and_trained(name):
    model = build_model(name, {}, input_shape=SHAPE, num_classes=10, seed=3)
    ctx = _ctx(model)
    inspection = CLIENT_DEFENSES.create("model_inspection", {})
    assert inspection.inspect(model, ctx) is None
    x, y = _data(128)
    with torch.no_grad():
        before = float(nn.functional.cross_entropy(model(x), y))
    train_local(
        model,
        x,
        y,
        LocalTrainConfig(epochs=4, batch_size=32, lr=0.1, max_steps=15),
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        assert float(nn.functional.cross_entropy(model(x), y)) < before  # it did train
    assert inspection.inspect(model, _ctx(model)) is None
    assert inspection.inspect(model, ctx) is None  # trained weights, same architecture as agreed


def test_resnet18_is_accepted_and_a_reshaped_model_is_named():
    res = build_model("resnet18", {"width": 16}, input_shape=(3, 32, 32), num_classes=10, seed=0)
    assert ModelInspection().inspect(res, _ctx(res)) is None
    agreed = build_model("mlp", {}, input_shape=SHAPE, num_classes=10, seed=0)
    wider = build_model("mlp", {"hidden": [256, 200]}, input_shape=SHAPE, num_classes=10, seed=0)
    reason = ModelInspection().inspect(wider, _ctx(agreed))
    assert reason is not None and "reshaped" in reason and "net.1.weight (200, 784) → (256, 784)" in reason
    smaller = build_model("mlp", {"hidden": [200]}, input_shape=SHAPE, num_classes=10, seed=0)
    assert "missing: net.5.weight, net.5.bias" in (ModelInspection().inspect(smaller, _ctx(agreed)) or "")


def test_apply_leaves_the_update_unchanged():
    model = build_model("mlp", {"hidden": [8]}, input_shape=SHAPE, num_classes=10, seed=0)
    delta = torch.randn(layout_of(model).dim, generator=torch.Generator().manual_seed(0))
    out = ModelInspection().apply(delta, _ctx(model))
    assert torch.equal(out, delta)
    with pytest.raises(Exception, match="cosine_threshold"):
        CLIENT_DEFENSES.create("model_inspection", {"cosine_threshold": 1.5})


def test_parallel_row_fraction_matches_a_brute_force():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 6, generator=g)
    w[5] = 3.0 * w[2]
    w[7] = -w[2] + 1e-4 * torch.randn(6, generator=g)
    w[9] = 0.0  # no direction: never counted
    u = nn.functional.normalize(w.double(), dim=1)
    cos = (u @ u.T).abs()
    for thr in (0.99, 0.9, 0.5):
        brute = (
            sum(
                1
                for i in range(40)
                if float(w[i].norm()) > 0
                and any(float(cos[i, j]) > thr for j in range(40) if j != i and float(w[j].norm()) > 0)
            )
            / 40
        )
        assert parallel_row_fraction(w, threshold=thr) == pytest.approx(brute)
        assert parallel_row_fraction(w, threshold=thr, chunk=7) == pytest.approx(brute)
    assert parallel_row_fraction(w, threshold=0.99) == pytest.approx(3 / 40)


def test_defense_pipeline_scenario_refuses_the_model():
    from simulator.experiment import prepare_leakage
    from simulator.scenario import load_scenario

    # digits (8×8, loads in no time) instead of mnist5k: the refusal does not depend on the images
    s = load_scenario(
        "scenarios/inversion_defense_pipeline.toml",
        ["leakage.public_images=200", "leakage.num_images=8", 'data.dataset="digits"'],
    )
    assert [d.name for d in s.defenses.client] == ["model_inspection"]
    assert s.leakage.protocol == "update" and s.leakage.local_steps == 4 and s.model.name == "cnn"
    attack = RobbingTheFed(bins=16)
    case = prepare_leakage(s, attack)
    assert case.refused is not None and "imprint.encoder" in case.refused
    assert float(case.view.payload.abs().sum()) == 0.0  # nothing was sent


def test_layout_check_lists_unexpected_and_missing():
    a = Layout(("a.weight", "b.weight"), ((2, 2), (3,)))
    b = Layout(("a.weight", "c.weight"), ((2, 2), (3,)))
    assert architecture_problems(b, a) == ["1 unexpected: c.weight", "1 missing: b.weight"]
    assert architecture_problems(a, a) == []


def test_model_inspection_refuses_an_imprinted_model_in_a_federated_run(tmp_path):
    """The federated ClientApp runs the client defenses' inspect on the received model: a server that starts
    the run from an imprint-forged MLP (Robbing the Fed's layer under the agreed names, via a warm-start
    checkpoint) is refused by every client, each recorded as failed with the reason; the model never moves."""
    from simulator import load_scenario, run

    honest = build_model("mlp", {"hidden": [32]}, input_shape=SHAPE, num_classes=10, seed=0)
    forged = copy.deepcopy(honest)
    with torch.no_grad():
        forged.net[1].weight.copy_(torch.full_like(forged.net[1].weight, 1.0 / forged.net[1].weight.shape[1]))
        forged.net[1].bias.copy_(-torch.linspace(0.0, 0.5, forged.net[1].bias.numel()))
    ckpt = tmp_path / "forged.pt"
    torch.save(forged.state_dict(), ckpt)
    base = [
        "simulation.engine='inline'",
        "federation.rounds=1",
        "data.max_examples=600",
        "data.partitioner={name='iid'}",
        "model.name='mlp'",
        "model.params={hidden=[32]}",
        f"model.warm_start={{checkpoint='{ckpt}'}}",
    ]
    s = load_scenario("scenarios/quickstart.toml", [*base, "defenses.client=[{name='model_inspection'}]"])
    r = run(s, write=False)
    rec = r.rounds[0]
    assert rec.clients_aggregated == 0 and len(rec.failed) == rec.clients_sampled > 0
    assert all("refused the model" in f["reason"] and "imprint-like" in f["reason"] for f in rec.failed)
    assert rec.skipped is not None
    # without the defense the same clients train on it
    plain = run(load_scenario("scenarios/quickstart.toml", base), write=False)
    first = plain.rounds[0]
    assert first.clients_aggregated == first.clients_sampled and not first.failed
