"""Backdoor attacks by malicious clients, one file each; importing registers them.

Data-level: ``badnets``, ``dba``, ``edge_case``. Model-level, over a data-level ``base``
(:mod:`attacks.backdoor.compose`): ``model_replacement`` / ``constrain_and_scale``, ``pgd``,
``neurotoxin``. Defense-aware, over any ``base``: ``adaptive`` (:mod:`attacks.backdoor.adaptive`).
"""

from attacks.backdoor import (  # noqa: F401
    adaptive,
    badnets,
    dba,
    edge_case,
    model_replacement,
    neurotoxin,
    pgd,
)
