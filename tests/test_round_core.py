"""The round core against hand-written references: a client step is local SGD then Δ; a server step with the
default plug-ins is FedAvg; every stage runs in DESIGN.md's order and refuses what it must."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import defenses
from defenses.base import AGGREGATORS, CLIENT_DEFENSES, ClientDefense
from simulator.context import ClientContext, RoundContext
from simulator.flat import layout_of, model_vector
from simulator.round import (
    Candidate,
    ClientPlugins,
    ModelRefused,
    ServerPlugins,
    ValidReply,
    client_step,
    server_step,
    validate_replies,
)
from simulator.sketching.base import COMPRESSORS
from simulator.training import LocalTrainConfig


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _ctx(model: nn.Module, pid: int, n: int, train: LocalTrainConfig) -> ClientContext:
    lay = layout_of(model)
    return ClientContext(
        partition_id=pid,
        server_round=1,
        seed=4,
        num_examples=n,
        global_vector=model_vector(model, lay),
        layout=lay,
        train=train,
        num_clients=3,
        expected_clients_per_round=3.0,
    )


def _data(pid: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + pid)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


TRAIN = LocalTrainConfig(epochs=1, batch_size=4, lr=0.1)


def test_client_step_is_full_batch_sgd_then_delta() -> None:
    """One full-batch SGD step by hand: Δ = −lr·∇L(w₀)."""
    model = _model()
    x, y = _data(0, 4)
    ref = copy.deepcopy(model)
    loss = nn.functional.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    expected = -0.1 * torch.cat([g.reshape(-1) for g in grads])
    reply = client_step(model, x, y, _ctx(model, 0, 4, TRAIN), ClientPlugins())
    got = torch.from_numpy(reply.payload["delta"])
    assert torch.allclose(got, expected, atol=1e-6)
    assert reply.metrics["num-examples"] == 4 and reply.metrics["local-steps"] == 1
    assert reply.metrics["train-loss"] == pytest.approx(float(loss.detach()), rel=1e-5)


def _round(
    plugins: ServerPlugins, sizes: tuple[int, ...] = (4, 8, 12)
) -> tuple[torch.Tensor, list[ValidReply], RoundContext]:
    glob = _model()
    lay = layout_of(glob)
    gvec = model_vector(glob, lay)
    valid = []
    for pid, n in enumerate(sizes):
        local = copy.deepcopy(glob)
        x, y = _data(pid, n)
        r = client_step(local, x, y, _ctx(glob, pid, n, TRAIN), ClientPlugins())
        valid.append(ValidReply(pid, n, {k: torch.from_numpy(v) for k, v in r.payload.items()}, r.metrics, 0))
    ctx = RoundContext(
        server_round=1,
        seed=4,
        global_vector=gvec,
        layout=lay,
        client_ids=tuple(range(len(sizes))),
        num_examples=sizes,
        num_clients=3,
        expected_clients_per_round=3.0,
    )
    return gvec, valid, ctx


def test_server_step_with_defaults_is_fedavg() -> None:
    gvec, valid, ctx = _round(ServerPlugins())
    out = server_step(valid, ctx, ServerPlugins(), server_lr=0.5)
    n = torch.tensor([4.0, 8.0, 12.0], dtype=torch.float64)
    mean = sum(w * r.arrays["delta"].to(torch.float64) for w, r in zip(n, valid)) / n.sum()
    assert out.new_global is not None and out.skipped is None
    assert torch.allclose(out.new_global, gvec + 0.5 * mean.to(torch.float32), atol=1e-7)
    assert out.accepted == [0, 1, 2]


def test_server_step_runs_the_aggregator_and_reports_rejections() -> None:
    gvec, valid, ctx = _round(ServerPlugins())
    valid[2].arrays["delta"] *= 1000.0  # an outlier Krum must drop
    krum = AGGREGATORS.create("multi_krum", {"num_malicious": 1, "num_selected": 2})
    out = server_step(valid, ctx, ServerPlugins(aggregator=krum), server_lr=1.0)
    assert out.accepted == [0, 1] and set(out.scores) == {0, 1, 2}
    expected = (4 * valid[0].arrays["delta"] + 8 * valid[1].arrays["delta"]) / 12
    assert out.new_global is not None and torch.allclose(out.new_global, gvec + expected, atol=1e-6)


def test_server_step_skips_below_min_replies_and_refuses_non_finite() -> None:
    _, valid, ctx = _round(ServerPlugins())
    short = server_step(valid[:1], ctx, ServerPlugins(), server_lr=1.0, min_replies=2)
    assert short.new_global is None and short.skipped == "1 valid replies"

    class Explode(defenses.base.ServerDefense):
        def apply(self, update: torch.Tensor, ctx: RoundContext) -> torch.Tensor:
            return update * float("inf")

    bad = server_step(valid, ctx, ServerPlugins(defenses=(Explode(),)), server_lr=1.0)
    assert bad.new_global is None and bad.skipped == "non-finite aggregate refused"


def test_client_defense_refusal_stops_the_client_before_training() -> None:
    model = _model()
    before = model_vector(model, layout_of(model)).clone()
    x, y = _data(0, 4)
    other = layout_of(nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 3)))
    ctx = _ctx(model, 0, 4, TRAIN)
    ctx = ClientContext(**{**ctx.__dict__, "layout": other})
    inspection: ClientDefense = CLIENT_DEFENSES.create("model_inspection", {})
    with pytest.raises(ModelRefused, match="architecture differs"):
        client_step(model, x, y, ctx, ClientPlugins(defenses=(inspection,)))
    assert torch.equal(model_vector(model, layout_of(model)), before)  # never trained


def test_client_step_order_privacy_then_defenses_then_compression() -> None:
    """Step 5's order: a clip defense after the compressor would see a sketch; here the sketch of the clipped
    Δ."""
    model = _model()
    x, y = _data(1, 8)
    clip = CLIENT_DEFENSES.create("clip", {"max_norm": 1e-3})
    comp = COMPRESSORS.create("gaussian_sketch", {"ratio": 0.5})
    ctx = _ctx(model, 1, 8, TRAIN)
    reply = client_step(copy.deepcopy(model), x, y, ctx, ClientPlugins(defenses=(clip,), compressor=comp))
    plain = client_step(copy.deepcopy(model), x, y, ctx, ClientPlugins(defenses=(clip,)))
    delta = torch.from_numpy(plain.payload["delta"])
    assert float(delta.norm()) == pytest.approx(1e-3, rel=1e-4)
    assert torch.allclose(
        torch.from_numpy(reply.payload["sketch"]),
        torch.from_numpy(comp.encode(delta, ctx)["sketch"]),
        atol=1e-9,
    )


def test_validation_rejects_each_bad_reply_with_its_reason() -> None:
    spec = COMPRESSORS.create("none", {}).spec(layout_of(_model()), 1)
    d = spec["delta"].shape[0]
    good = torch.zeros(d).numpy()
    cands = [
        Candidate(0, {"delta": good}, {"num-examples": 3}),
        Candidate(1, {"delta": good * float("nan")}, {"num-examples": 3}),
        Candidate(2, {"delta": good[:-1]}, {"num-examples": 3}),
        Candidate(3, {"delta": good}, {"num-examples": 0}),
        Candidate(0, {"delta": good}, {"num-examples": 3}),
        Candidate(4, failed="client crashed"),
        Candidate(5, malformed="not an ArrayRecord"),
    ]
    v = validate_replies(cands, spec=spec, expected={0, 1, 2, 3, 4, 5})
    assert [r.partition_id for r in v.valid] == [0]
    reasons = {r["partition"]: r["reason"] for r in v.rejected}
    assert "non-finite" in reasons[1] and "shape" in reasons[2] and "num-examples" in reasons[3]
    assert "answered twice" in reasons[0] and reasons[5] == "not an ArrayRecord"
    assert v.failed == [{"partition": 4, "reason": "client crashed"}]
