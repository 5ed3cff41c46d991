"""Untargeted model poisoning: the numerical core of the attacks, as pure functions (no registry).

Every attack maps the updates the attackers know, ``benign`` of shape ``(n_b, d)``, to the
``(num_malicious, d)`` malicious updates. ``benign`` is either the benign updates of the round
(omniscient / full knowledge) or the attackers' own honestly computed updates (partial knowledge); the
function is the same, the caller chooses the input. Randomised attacks take a ``torch.Generator``.

* :mod:`~attacks.poisoning.simple`: sign flipping, Gaussian noise;
* :mod:`~attacks.poisoning.alie`: "A Little Is Enough" (Baruch et al., NeurIPS 2019);
* :mod:`~attacks.poisoning.ipm`: inner-product manipulation (Xie et al., UAI 2019);
* :mod:`~attacks.poisoning.fang`: attacks on Krum and trimmed mean / median (Fang et al., USENIX
  Security 2020);
* :mod:`~attacks.poisoning.min_max`: Min-Max, Min-Sum, AGR-tailored (Shejwalkar & Houmansadr, NDSS 2021).

Aggregators the attacks need (Krum for Fang's attack, the target rule of the AGR-tailored attack) are
passed in as callables; this package does not import :mod:`defenses`.

Wiring into a federated run (importing the package registers them):

* :mod:`~attacks.poisoning.plugins`: each attack as a :data:`~attacks.base.POISONING_ATTACKS` plug-in for
  ``[attacks.poisoning]``, run by the round core's server step as a simulation of colluding attackers;
* :mod:`~attacks.poisoning.label_flip`: label flipping, data poisoning, a :data:`~attacks.base.CLIENT_ATTACKS`
  plug-in for the client attack slot ``[attacks.backdoor]``;
* :mod:`~attacks.poisoning.checks`: the load-time checks of ``[attacks.poisoning]``.
"""

from attacks.poisoning import alie, checks, fang, ipm, label_flip, min_max, plugins, simple  # noqa: F401
from attacks.poisoning.alie import alie_updates, alie_z_max
from attacks.poisoning.fang import (
    Selector,
    fang_krum,
    fang_krum_lambda,
    fang_krum_lambda_bound,
    fang_trimmed_mean,
    fang_trimmed_mean_partial,
    krum_select,
)
from attacks.poisoning.ipm import ipm_updates
from attacks.poisoning.min_max import (
    Perturbation,
    agr_tailored,
    agr_tailored_gamma,
    agr_tailored_oracle,
    agr_tailored_oracle_gamma,
    gamma_search,
    min_max_gamma,
    min_max_updates,
    min_sum_gamma,
    min_sum_updates,
    perturbation_vector,
)
from attacks.poisoning.simple import gaussian_noise, sign_flip

__all__ = [
    "Perturbation",
    "Selector",
    "agr_tailored",
    "agr_tailored_gamma",
    "agr_tailored_oracle",
    "agr_tailored_oracle_gamma",
    "alie_updates",
    "alie_z_max",
    "fang_krum",
    "fang_krum_lambda",
    "fang_krum_lambda_bound",
    "fang_trimmed_mean",
    "fang_trimmed_mean_partial",
    "gamma_search",
    "gaussian_noise",
    "ipm_updates",
    "krum_select",
    "min_max_gamma",
    "min_max_updates",
    "min_sum_gamma",
    "min_sum_updates",
    "perturbation_vector",
    "sign_flip",
]
