"""Optimisation attacks reach the expected quality on small CPU-sized cases (fixed seeds).

Full-strength numbers (more iterations, restarts) are produced by benchmarks/leakage_table.py.
"""

import torch

from attacks.base import INVERSION_ATTACKS
from simulator.experiment import attack_update, prepare_leakage
from simulator.scenario import load_scenario, scenario_from_dict


def _ig_case(*overrides: str):
    return prepare_leakage(load_scenario("scenarios/leakage_ig.toml", list(overrides)))


def _run(name: str, params: dict, case):
    return attack_update(INVERSION_ATTACKS.create(name, params), case.view, case.truth_x, case.truth_y)


def test_ig_batch1_untrained_cnn_photo_reaches_20db():
    # measured: 23.0 dB after 150 iterations (~5 s on one core); breaching's 24k iterations go higher
    case = _ig_case()
    _, m = _run("inverting_gradients", {"iterations": 150, "restarts": 1, "label_strategy": "idlg"}, case)
    assert m["psnr"] >= 20.0
    assert m["ssim"] >= 0.7
    assert m["label_accuracy"] == 1.0


def test_ig_on_fedavg_update_three_local_steps():
    # the server simulates 3 SGD steps (lr 0.1, batch 1) differentiably; measured 21.7 dB
    case = _ig_case('leakage.protocol="update"', "leakage.local_steps=3", "leakage.lr=0.1")
    assert case.view.protocol.kind == "update" and case.view.protocol.total_steps == 3
    _, m = _run("inverting_gradients", {"iterations": 150, "restarts": 1, "label_strategy": "idlg"}, case)
    assert m["psnr"] >= 18.0


def test_ig_fails_on_a_drowned_payload():
    # negative control: the same attack against a gradient buried in noise must not succeed
    case = _ig_case()
    noisy = prepare_leakage(
        load_scenario(
            "scenarios/leakage_ig.toml", ['defenses.client=[{name="gaussian_noise", params={sigma=1.0}}]']
        )
    )
    _, good = _run("inverting_gradients", {"iterations": 60, "label_strategy": "idlg"}, case)
    _, bad = _run("inverting_gradients", {"iterations": 60, "label_strategy": "idlg"}, noisy)
    assert bad["psnr"] < 14.0 < good["psnr"] - 4.0


def _digit_case():
    s = scenario_from_dict(
        {
            "kind": "leakage",
            "seed": 0,
            "data": {"dataset": "digits"},
            "model": {"name": "lenet"},
            "leakage": {"images": [3]},
            "attacks": {"inversion": {"name": "dlg"}},
        }
    )
    return prepare_leakage(s)


def test_dlg_recovers_an_8x8_digit_and_its_label():
    # measured: 32.7 dB after 30 L-BFGS steps
    r, m = _run("dlg", {"iterations": 30}, _digit_case())
    assert m["psnr"] >= 28.0
    assert m["label_accuracy"] == 1.0
    assert r.info["attack"] == "dlg"


def test_idlg_recovers_an_8x8_digit():
    # measured: 29.9 dB after 30 L-BFGS steps, label exact
    _, m = _run("idlg", {"iterations": 30}, _digit_case())
    assert m["psnr"] >= 25.0
    assert m["label_accuracy"] == 1.0


def test_batched_restarts_equal_the_loop():
    case = _ig_case()
    common = {"iterations": 3, "restarts": 2, "label_strategy": "idlg"}
    a = INVERSION_ATTACKS.create("inverting_gradients", {**common, "batched_restarts": "vmap"})
    b = INVERSION_ATTACKS.create("inverting_gradients", {**common, "batched_restarts": "loop"})
    ra, rb = a.reconstruct(case.view), b.reconstruct(case.view)
    assert ra.info["batched_restarts"] and not rb.info["batched_restarts"]
    assert torch.allclose(ra.images, rb.images, atol=1e-5)
    assert ra.losses == __import__("pytest").approx(rb.losses, rel=1e-4)


def test_restart_with_lowest_matching_loss_is_returned():
    case = _ig_case()
    r = INVERSION_ATTACKS.create(
        "inverting_gradients", {"iterations": 5, "restarts": 3, "seed": 1, "label_strategy": "idlg"}
    ).reconstruct(case.view)
    assert len(r.losses) == 3 and r.info["best_restart"] == min(range(3), key=lambda i: r.losses[i])


def _bn_resnet_view():
    """A FedSGD view of a narrow BatchNorm ResNet-18 (width 4) on one 3×16×16 image."""
    from simulator.experiment import gradient_view
    from simulator.models import build_model

    model = build_model(
        "resnet18", {"norm": "batch", "width": 4}, input_shape=(3, 16, 16), num_classes=10, seed=0
    )
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return gradient_view(model, x, torch.tensor([3]))


def test_batched_restarts_equal_the_loop_on_batchnorm_and_leave_the_model_untouched():
    # BatchNorm in train mode normalises with batch statistics; the simulation's copy keeps no running
    # statistics, so vmap can batch the restarts and the server's model is not written to
    view = _bn_resnet_view()
    before = {k: v.clone() for k, v in view.model.state_dict().items()}
    common = {"iterations": 3, "restarts": 2, "label_strategy": "idlg"}
    ra = INVERSION_ATTACKS.create("inverting_gradients", {**common, "batched_restarts": "vmap"}).reconstruct(
        view
    )
    rb = INVERSION_ATTACKS.create("inverting_gradients", {**common, "batched_restarts": "loop"}).reconstruct(
        view
    )
    assert ra.info["batched_restarts"] and not rb.info["batched_restarts"]
    assert torch.allclose(ra.images, rb.images, atol=1e-5)
    after = view.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running_mean / var / count unchanged


def test_simulated_payload_of_the_truth_is_the_received_gradient_with_batchnorm():
    # the copy without running statistics computes the same train-mode gradient the client sent
    from attacks.inversion._common import PayloadSimulator, gradient_distance

    view = _bn_resnet_view()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sim = PayloadSimulator(view)
    assert float(gradient_distance(sim.simulate(x, torch.tensor([3])), sim.target, "cosine")) < 1e-6


def test_compiled_step_reproduces_the_eager_attack():
    # torch.compile captures the whole step (payload simulation, double backward, sign, restarts under
    # vmap); aot_eager runs the captured graph without code generation, so the result must match eager
    case = _ig_case()
    common = {"iterations": 4, "restarts": 2, "label_strategy": "idlg", "batched_restarts": "vmap"}
    eager = INVERSION_ATTACKS.create("inverting_gradients", {**common, "compile_step": "off"}).reconstruct(
        case.view
    )
    comp = INVERSION_ATTACKS.create(
        "inverting_gradients", {**common, "compile_step": "on", "compile_backend": "aot_eager"}
    ).reconstruct(case.view)
    assert comp.info["compiled"] and not eager.info["compiled"]
    assert torch.allclose(comp.images, eager.images, atol=1e-5)
    assert comp.losses == __import__("pytest").approx(eager.losses, rel=1e-4)


def test_a_compiled_step_reused_for_another_view_attacks_that_view():
    # dynamo keeps the captured graph for the next attack of the same shapes (an in-run observer attacks
    # many updates): the model, payload and labels must be the new view's inputs, not the first one's
    # constants
    a = _ig_case()
    b = _ig_case("leakage.images=[9]", "seed=3")  # another image and another model initialisation
    common = {
        "iterations": 4,
        "restarts": 2,
        "label_strategy": "idlg",
        "batched_restarts": "vmap",
        "compile_backend": "aot_eager",
    }
    INVERSION_ATTACKS.create("inverting_gradients", {**common, "compile_step": "on"}).reconstruct(a.view)
    comp = INVERSION_ATTACKS.create("inverting_gradients", {**common, "compile_step": "on"}).reconstruct(
        b.view
    )
    eager = INVERSION_ATTACKS.create("inverting_gradients", {**common, "compile_step": "off"}).reconstruct(
        b.view
    )
    assert torch.allclose(comp.images, eager.images, atol=1e-5)
    assert comp.losses == __import__("pytest").approx(eager.losses, rel=1e-4)


def test_auto_compiles_only_on_a_gpu():
    case = _ig_case()
    r = INVERSION_ATTACKS.create(
        "inverting_gradients", {"iterations": 1, "label_strategy": "idlg"}
    ).reconstruct(case.view)
    assert r.info["compiled"] is False  # CPU: no one-off compile for a short run


def test_a_failed_compile_warns_and_runs_eagerly_unless_required(monkeypatch):
    import pytest

    from attacks.inversion import _common

    def broken(fn, **kw):
        def run(x):
            raise RuntimeError("backend exploded")

        return run

    monkeypatch.setattr(_common.torch, "compile", broken)

    def double(x):
        return 2 * x

    with pytest.warns(RuntimeWarning, match="runs eagerly"):
        fn, ok = _common.compile_step_fn(
            double, torch.ones(2), device=torch.device("cpu"), backend="inductor", required=False
        )
    assert fn is double and ok is False
    with pytest.raises(RuntimeError, match=r"compile_step='on'.*backend exploded"):
        _common.compile_step_fn(
            double, torch.ones(2), device=torch.device("cpu"), backend="inductor", required=True
        )
