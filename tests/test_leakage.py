"""The standalone leakage experiment: outputs, defenses on the payload, the runner's dispatch."""

import json

import pytest
import torch

from defenses.base import CLIENT_DEFENSES
from defenses.privacy.clip import clip_l2
from defenses.privacy.gaussian_noise import add_gaussian_noise
from defenses.privacy.prune import prune_smallest
from simulator.experiment import prepare_leakage, run_leakage
from simulator.scenario import ScenarioError, load_scenario

FAST = ["attacks.inversion.params.iterations=20", "attacks.inversion.params.restarts=1"]


def test_run_leakage_writes_summary_and_png(tmp_path):
    s = load_scenario("scenarios/leakage_ig.toml", FAST)
    summary = run_leakage(s, tmp_path)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data == json.loads(json.dumps(summary))
    inv = data["inversion"]
    for key in ("psnr", "ssim", "label_accuracy", "per_image", "mse", "lpips"):
        assert key in inv
    assert len(inv["per_image"]) == 1 and inv["per_image"][0]["psnr"] == pytest.approx(inv["psnr"])
    assert data["wall_time_s"] > 0 and data["kind"] == "leakage"
    assert data["scenario"] == s.resolved()
    info = inv["attack_info"]  # how the attack ran, as the attack reported it
    assert info["attack"] == "inverting_gradients" and info["iterations"] == 20 and info["best_restart"] == 0
    assert info["compiled"] is False and info["compile_seconds"] == pytest.approx(0.0, abs=0.01)
    assert 20 / inv["attack_time_s"] <= info["iterations_per_second"]  # the loop alone, set-up excluded
    png = tmp_path / "reconstruction.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_dlg_scenario_loads_and_validates():
    s = load_scenario("scenarios/leakage_dlg.toml")
    assert s.kind == "leakage" and s.attacks.inversion.name == "dlg" and s.model.name == "lenet"


def test_simulator_run_dispatches_leakage(tmp_path):
    from simulator.runner import run

    s = load_scenario("scenarios/leakage_dlg.toml", ["attacks.inversion.params.iterations=2"])
    result = run(s, out_dir=tmp_path / "out", store=tmp_path / "store.sqlite")
    assert result.inversion["attack"] == "dlg"
    assert (tmp_path / "out" / "summary.json").exists() and (tmp_path / "out" / "reconstruction.png").exists()


def test_defenses_are_applied_to_the_payload_in_order():
    base = prepare_leakage(load_scenario("scenarios/leakage_ig.toml"))
    clipped = prepare_leakage(
        load_scenario(
            "scenarios/leakage_ig.toml",
            [
                'defenses.client=[{name="prune", params={fraction=0.9}}, '
                '{name="clip", params={max_norm=0.01}}]'
            ],
        )
    )
    p, q = base.view.payload, clipped.view.payload
    assert float(q.norm()) == pytest.approx(0.01, rel=1e-5)
    assert int((q != 0).sum()) <= int(0.1 * p.numel()) + 1
    kept = q != 0
    assert torch.allclose(q[kept] / p[kept], (q[kept] / p[kept])[0].expand(int(kept.sum())), rtol=1e-4)


def test_defense_functions():
    g = torch.Generator().manual_seed(0)
    v = torch.tensor([3.0, -4.0])
    assert torch.allclose(clip_l2(v, max_norm=1.0), torch.tensor([0.6, -0.8]))
    assert torch.equal(clip_l2(v, max_norm=10.0), v)
    assert torch.equal(
        prune_smallest(torch.tensor([0.1, -3.0, 0.5, 2.0]), fraction=0.5), torch.tensor([0.0, -3.0, 0.0, 2.0])
    )
    assert torch.equal(add_gaussian_noise(v, sigma=0.0, generator=g), v)
    big = add_gaussian_noise(torch.zeros(20000), sigma=0.5, generator=g)
    assert float(big.std()) == pytest.approx(0.5, rel=0.03)
    with pytest.raises(Exception, match="fraction"):
        CLIENT_DEFENSES.create("prune", {"fraction": 1.5})


def test_bad_leakage_sections_are_reported():
    with pytest.raises(ScenarioError, match=r"leakage\.images"):
        load_scenario("scenarios/leakage_ig.toml", ["leakage.images=[]"])
    with pytest.raises(ScenarioError, match="outside the data set"):
        prepare_leakage(load_scenario("scenarios/leakage_ig.toml", ["leakage.images=[100000]"]))
    with pytest.raises(ScenarioError, match="label_strategy"):
        load_scenario("scenarios/leakage_ig.toml", ['attacks.inversion.params.label_strategy="oracle"'])
