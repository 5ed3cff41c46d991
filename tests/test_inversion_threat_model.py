"""The attacker sees only the ServerView: no ground truth can reach an attack through its inputs."""

import copy
import dataclasses
import inspect

import pytest
import torch

from attacks.base import INVERSION_ATTACKS, ServerView
from simulator.experiment import prepare_leakage
from simulator.scenario import load_scenario

SMALL = {
    "dlg": {"iterations": 2, "max_iter": 5},
    "idlg": {"iterations": 2, "max_iter": 5},
    "inverting_gradients": {"iterations": 5, "restarts": 2, "label_strategy": "llg"},
    "analytic_fc": {},
    "soft_label": {"iterations": 3},
    "robbing_the_fed": {"bins": 16},
    "sketch_inverting_gradients": {"iterations": 3, "restarts": 1},
    "generative_latent": {"iterations": 2, "restarts": 2, "prior_epochs": 1, "use_cache": False},
    "gifd": {"iterations": 2, "restarts": 1, "feature_iterations": 2, "prior_epochs": 1, "use_cache": False},
    "cocktail_party": {"refine_iterations": 20},
    "aggregate_labels": {},
}
# attacks that need another model, batch, server or payload than leakage_ig's CNN on two images
OVERRIDES = {
    "analytic_fc": ["model.name=mlp"],
    "cocktail_party": ["model.name=mlp"],
    "soft_label": ["leakage.images=[5]"],
    "robbing_the_fed": ['leakage.server="malicious"', "leakage.public_images=60"],
    "generative_latent": ["leakage.public_images=64"],
    "gifd": ["leakage.public_images=64"],
    "sketch_inverting_gradients": [
        'model.name="lenet"',
        'compression.name="srht"',
        "compression.params.ratio=0.25",
    ],
}


def test_every_attack_is_covered_here():
    assert set(INVERSION_ATTACKS.names()) == set(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_reconstruct_takes_only_the_server_view(name):
    cls = INVERSION_ATTACKS.get(name).factory
    sig = inspect.signature(cls.reconstruct)
    assert list(sig.parameters) == ["self", "view"]
    hints = inspect.get_annotations(cls.reconstruct, eval_str=True)
    assert hints["view"] is ServerView
    # no constructor parameter can carry data: every param is a plain scalar / string option
    for field in INVERSION_ATTACKS.get(name).params.model_fields.values():
        assert "Tensor" not in str(field.annotation) and "ndarray" not in str(field.annotation)


def _tensors_of(view: ServerView):
    for f in dataclasses.fields(view):
        v = getattr(view, f.name)
        if isinstance(v, torch.Tensor):
            yield f.name, v
    for k, v in view.model.state_dict().items():
        yield f"model.{k}", v


def _case(*over: str, attack=None):
    return prepare_leakage(
        load_scenario("scenarios/leakage_ig.toml", ["leakage.images=[5, 17]", *over]), attack
    )


@pytest.mark.parametrize("protocol", ["gradient", "update"])
def test_server_view_holds_no_client_data(protocol):
    case = _case(f'leakage.protocol="{protocol}"', "leakage.local_steps=2")
    xs = case.truth_x.flatten()
    for name, t in _tensors_of(case.view):
        flat = t.detach().flatten().float()
        assert not (flat.numel() == xs.numel() and torch.allclose(flat, xs)), name
        assert not (
            flat.numel() == case.truth_x[0].numel() and torch.allclose(flat, case.truth_x[0].flatten())
        ), name
        assert not (flat.numel() == case.truth_y.numel() and torch.equal(flat.long(), case.truth_y)), name
    assert case.view.payload.numel() == sum(p.numel() for p in case.view.model.state_dict().values())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_attack_is_blind_to_the_data_after_the_payload(name):
    attack = INVERSION_ATTACKS.create(name, SMALL[name])
    case = _case(*OVERRIDES.get(name, []), attack=attack)  # attacker-side set-up sees public data only
    before = attack.reconstruct(copy.deepcopy(case.view))
    # the victim's data is destroyed after the payload is computed: an attack reading it would change
    case.truth_x.fill_(float("nan"))
    case.truth_y.fill_(-1)
    after = attack.reconstruct(copy.deepcopy(case.view))
    assert torch.isfinite(after.images).all()
    assert torch.equal(before.images, after.images)
    assert (before.labels is None and after.labels is None) or torch.equal(before.labels, after.labels)


def test_public_data_is_disjoint_from_the_victims_batch():
    seen = {}

    class Spy:
        needs_public_data, malicious_server, wants_sketch = True, False, False

        def prepare(self, public, **_):
            seen["public"] = public

    case = _case("leakage.public_images=200", attack=Spy())
    pub = seen["public"].x.flatten(1)
    for img in case.truth_x.flatten(1):
        assert not (pub == img).all(dim=1).any()
    assert pub.shape[0] == 200 and "outside the victim" in seen["public"].source
