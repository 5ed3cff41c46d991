"""Cheap contract of every registered inversion attack, parametrised by registry name (nothing is built
or run; ``tests/test_inversion_threat_model.py`` runs every attack): the capability flags the load-time
checks and the observer read are declared as bools, and the registry entry's docstring summary (its first
paragraph) is non-empty and cites a paper (an "et al." or a year).
"""

from __future__ import annotations

import inspect
import re

import pytest

from attacks.base import INVERSION_ATTACKS, InversionAttack
from simulator.registry import import_plugins

import_plugins()

FLAGS = ("wants_sketch", "malicious_server", "needs_public_data", "runs_on_device")
CITATION = re.compile(r"\bet al\.|\b(19|20)\d{2}\b")
NAMES = INVERSION_ATTACKS.names()
#: entries whose summary names its method but cites no paper (documentation bugs; xfail until fixed)
NO_CITATION: dict[str, str] = {}  # name -> why its entry cites no paper yet (strict xfail)


def _attack_class(name: str) -> type:
    factory = INVERSION_ATTACKS.get(name).factory
    return factory if inspect.isclass(factory) else type(INVERSION_ATTACKS.create(name, {}))


@pytest.mark.parametrize("name", NAMES)
def test_capability_flags_are_declared_bools(name: str) -> None:
    cls = _attack_class(name)
    assert issubclass(cls, InversionAttack)
    for flag in FLAGS:
        assert isinstance(getattr(cls, flag), bool), f"{name}.{flag} is not a bool"


def _cites(name: str):
    if name in NO_CITATION:
        return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=NO_CITATION[name]))
    return name


@pytest.mark.parametrize("name", [_cites(n) for n in NAMES])
def test_docstring_summary_cites_a_paper(name: str) -> None:
    entry = INVERSION_ATTACKS.get(name)
    assert entry.doc.strip(), f"{name} has no docstring"
    summary = entry.summary.strip()
    assert summary and summary != "(no description)"
    # the summary is the docstring's first paragraph (its first line may stop mid-citation)
    paragraph = " ".join(entry.doc.strip().split("\n\n")[0].split())
    assert CITATION.search(paragraph), f"{name}: the summary cites no paper: {paragraph!r}"
