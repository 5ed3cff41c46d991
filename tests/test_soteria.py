"""Soteria (Sun et al., CVPR 2021): ρ_i against a loop over entries, the pruned columns, and the leak it
stops."""

import pytest
import torch
from torch import nn

from defenses.base import CLIENT_DEFENSES
from defenses.privacy.soteria import Soteria, defended_layer, representation_ratios
from simulator.context import ClientContext
from simulator.flat import flatten, layout_of, unflatten
from simulator.models import build_model
from simulator.training import LocalTrainConfig


def _model(name="cnn"):
    return build_model(name, {}, input_shape=(1, 12, 12), num_classes=4, seed=0)


def _ctx(model, x, y):
    layout = layout_of(model)
    return ClientContext(
        partition_id=0,
        server_round=1,
        seed=0,
        num_examples=int(x.shape[0]),
        global_vector=torch.zeros(layout.dim),
        layout=layout,
        train=LocalTrainConfig(),
        num_clients=1,
        expected_clients_per_round=1.0,
        received_model=model,
        data=(x, y),
    )


def _grad(model, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    params = dict(model.named_parameters())
    g = torch.autograd.grad(loss, list(params.values()))
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    state.update(zip(params, g))
    return flatten(state, layout_of(model))


def test_ratios_match_a_loop_over_representation_entries():
    torch.manual_seed(0)
    model, x = _model().eval(), torch.rand(3, 1, 12, 12)
    _, lin = defended_layer(model)
    rho = representation_ratios(model, x)
    feats = []
    h = lin.register_forward_pre_hook(lambda m, a: feats.append(a[0]))
    xg = x.clone().requires_grad_(True)
    model(xg)
    h.remove()
    r = feats[0].reshape(3, -1)
    assert rho.shape == (lin.in_features,)
    for i in range(0, lin.in_features, max(1, lin.in_features // 12)):  # the official code's per-entry loop
        (gx,) = torch.autograd.grad(r[:, i].sum(), xg, retain_graph=True)
        ref = r[:, i].norm() / (gx.norm() + 1e-12)
        assert rho[i].item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-9)


def test_only_the_smallest_ratio_columns_of_the_defended_layer_are_zeroed():
    torch.manual_seed(1)
    model, x, y = _model(), torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 2, 3])
    d = CLIENT_DEFENSES.create("soteria", {"fraction": 0.3})
    g = _grad(model, x, y)
    out = d.apply(g, _ctx(model, x, y))
    name, lin = defended_layer(model)
    before, after = unflatten(g, layout_of(model)), unflatten(out, layout_of(model))
    for k in before:
        if k != f"{name}.weight":
            assert torch.equal(before[k], after[k]), k
    w = after[f"{name}.weight"].view(lin.out_features, lin.in_features)
    zero_cols = (w == 0).all(dim=0)
    mask = Soteria(fraction=0.3).mask(model, x)
    assert int(mask.sum()) == int(0.3 * lin.in_features)
    was_zero = (before[f"{name}.weight"].view_as(w) == 0).all(dim=0)
    assert zero_cols[mask].all()  # every pruned entry's column is gone ...
    assert torch.equal(zero_cols & ~mask, was_zero & ~mask)  # ... and no other column changed
    rho = representation_ratios(model, x)
    assert rho[mask].max() <= rho[~mask].min()


def test_soteria_stops_the_analytic_leak_of_the_first_layer():
    """On an MLP the defended layer is the first one, whose gradient rows are multiples of the input:
    the analytic attack rebuilds it exactly without Soteria; the pruned pixels come back black."""
    from attacks.base import INVERSION_ATTACKS, ProtocolInfo, ServerView
    from attacks.inversion.analytic import AnalyticFC  # noqa: F401  (registers analytic_fc)
    from attacks.metrics import psnr

    torch.manual_seed(2)
    model = build_model("mlp", {}, input_shape=(1, 12, 12), num_classes=4, seed=0)
    x, y = torch.rand(1, 1, 12, 12), torch.tensor([2])
    g = _grad(model, x, y)
    attack = INVERSION_ATTACKS.create("analytic_fc", {})

    def leak(payload):
        view = ServerView(
            model=model,
            payload=payload,
            protocol=ProtocolInfo(kind="gradient"),
            input_shape=(1, 12, 12),
            num_classes=4,
        )
        return float(psnr(attack.reconstruct(view).images, x).mean())

    clean = leak(g)
    defended = leak(CLIENT_DEFENSES.create("soteria", {"fraction": 0.5}).apply(g, _ctx(model, x, y)))
    assert clean > 60
    assert defended < 15, (clean, defended)
