"""Registries: signature-derived params, did-you-mean, contract checks over every plug-in."""

from __future__ import annotations

import pytest
import torch

from simulator.registry import BadParams, Registry, UnknownName, all_registries


def test_params_model_comes_from_the_signature():
    r: Registry[int] = Registry("test-widget")

    @r.register("box", context=("scale",))
    def box(scale: int, size: int = 3, name: str = "b") -> int:
        """A box."""
        return scale * size

    assert list(r.get("box").params.model_fields) == ["size", "name"]
    assert r.create("box", {"size": 4}, scale=2) == 8
    with pytest.raises(BadParams, match="size"):
        r.create("box", {"size": "big"}, scale=1)
    with pytest.raises(BadParams, match="unknown parameter"):
        r.validate("box", {"sise": 1})
    with pytest.raises(UnknownName, match="did you mean 'box'"):
        r.get("bx")


def test_every_registry_entry_has_a_doc_line():
    for kind, reg in all_registries().items():
        for e in reg.entries():
            assert e.summary != "(no description)", f"{kind} {e.name} has no docstring"


@pytest.mark.parametrize("name", ["mlp", "cnn", "lenet", "resnet18"])
def test_models_build_deterministically_and_have_no_inplace_relu(name):
    from simulator.models import MODELS, build_model

    assert name in MODELS
    shape = (3, 32, 32)
    a = build_model(name, {}, input_shape=shape, num_classes=7, seed=1)
    b = build_model(name, {}, input_shape=shape, num_classes=7, seed=1)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert a(torch.rand(2, *shape)).shape == (2, 7)
    assert not any(isinstance(m, torch.nn.ReLU) and m.inplace for m in a.modules())


def test_models_pass_opacus_validation():
    from opacus.validators import ModuleValidator

    from simulator.models import build_model

    for name in ["mlp", "cnn", "lenet", "resnet18"]:
        m = build_model(name, {}, input_shape=(1, 28, 28), num_classes=10, seed=0)
        assert ModuleValidator.validate(m, strict=False) == [], name


def test_a_subclass_passing_kwargs_on_inherits_its_parents_parameters() -> None:
    from simulator.registry import Registry

    reg: Registry[object] = Registry("thing")

    class Base:
        def __init__(self, *, a: int = 1, b: str = "x") -> None:
            self.a, self.b = a, b

    @reg.register("child")
    class Child(Base):
        def __init__(self, *, c: float = 0.5, a: int = 7, **rest: object) -> None:
            super().__init__(a=a, **rest)  # type: ignore[arg-type]
            self.c = c

    assert set(reg.get("child").params.model_fields) == {"a", "b", "c"}
    made = reg.create("child", {"b": "y"})
    assert (made.a, made.b, made.c) == (7, "y", 0.5)  # the subclass's default wins on a shared name
    with pytest.raises(Exception, match="unknown parameter"):
        reg.create("child", {"d": 1})


def test_temporarily_registers_only_inside_the_block() -> None:
    reg: Registry[object] = Registry("tmp-kind")

    class Thing:
        """A thing."""

    with reg.temporarily("thing", Thing):
        assert reg.names() == ["thing"] and isinstance(reg.create("thing"), Thing)
        with pytest.raises(ValueError, match="already registered"), reg.temporarily("thing", Thing):
            pass
    assert reg.names() == []
