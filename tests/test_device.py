"""``simulation.device``: a bad device name, a GPU that is not there, and an attack that runs on the CPU
only are each one clear scenario error naming the field, before any work is done."""

import pytest
import torch

from attacks.base import INVERSION_ATTACKS
from simulator.experiment.leakage import prepare_leakage, view_on_device
from simulator.runner import run
from simulator.scenario import ScenarioError, load_scenario, scenario_from_dict


def test_a_device_name_torch_does_not_run_on_is_refused_with_the_allowed_names():
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict({"simulation": {"device": "gpu"}}, source="bad.toml")
    assert [p.path for p in e.value.problems] == ["simulation.device"]
    assert "'gpu'" in str(e.value) and "'cpu', 'cuda' or 'cuda:N'" in str(e.value)
    for ok in ("cpu", "cuda", "cuda:1"):
        assert scenario_from_dict({"simulation": {"device": ok}}).simulation.device == ok


def test_ray_clients_on_a_gpu_must_reserve_a_share_of_it():
    with pytest.raises(ScenarioError, match=r"with engine 'ray' needs num_gpus_per_client > 0"):
        scenario_from_dict({"simulation": {"engine": "ray", "device": "cuda"}})
    ok = scenario_from_dict({"simulation": {"engine": "ray", "device": "cuda", "num_gpus_per_client": 0.25}})
    assert ok.simulation.num_gpus_per_client == 0.25
    assert (
        scenario_from_dict({"simulation": {"engine": "inline", "device": "cuda"}}).simulation.device == "cuda"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("path", ["scenarios/leakage_ig.toml", "scenarios/quickstart.toml"])
def test_cuda_without_a_gpu_is_one_clear_error_before_any_work(path, tmp_path):
    s = load_scenario(path, ["simulation.device='cuda'", "simulation.engine='inline'"])
    with pytest.raises(
        ScenarioError, match=r"simulation.device.*'cuda' but torch .* sees no CUDA GPU; use 'cpu'"
    ):
        run(s, out_dir=tmp_path / "out", store=tmp_path / "r.sqlite")
    assert not (tmp_path / "out").exists()


def test_an_attack_that_runs_on_the_cpu_only_names_those_that_run_on_a_gpu():
    s = load_scenario("scenarios/leakage_analytic.toml", ["simulation.device='cuda'"])
    attack = INVERSION_ATTACKS.create(s.attacks.inversion.name, s.attacks.inversion.params)
    case = prepare_leakage(s, attack)
    with pytest.raises(
        ScenarioError,
        match=r"simulation.device.*runs on the CPU only; on a GPU: dlg, idlg, "
        r"inverting_gradients",
    ):
        view_on_device(s, case.view, attack)


def test_on_the_cpu_the_view_is_handed_over_as_it_is():
    s = load_scenario("scenarios/leakage_ig.toml")
    attack = INVERSION_ATTACKS.create(s.attacks.inversion.name, s.attacks.inversion.params)
    case = prepare_leakage(s, attack)
    assert view_on_device(s, case.view, attack) is case.view
