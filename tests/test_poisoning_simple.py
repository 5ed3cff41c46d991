"""Sign flipping and Gaussian noise (attacks.poisoning.simple) against direct computations, plus the
package's layering (no import of ``defenses``). Tolerances are stated per assertion."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from scipy import stats

from attacks import poisoning
from attacks.poisoning import gaussian_noise, sign_flip


def _benign(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_sign_flip_of_the_mean_matches_a_loop() -> None:
    b = _benign(7, 30, 0)
    out = sign_flip(b, num_malicious=3, scale=2.5)
    assert out.shape == (3, 30) and out.dtype == b.dtype
    for j in range(30):
        mean_j = math.fsum(float(b[i, j]) for i in range(7)) / 7
        for r in range(3):  # float32 result of a float64 computation: 1e-6 absolute
            assert float(out[r, j]) == pytest.approx(-2.5 * mean_j, abs=1e-6)


def test_sign_flip_per_attacker_negates_each_own_update() -> None:
    own = _benign(4, 25, 1)
    out = sign_flip(own, num_malicious=4, scale=3.0, per_attacker=True)
    torch.testing.assert_close(out, -3.0 * own, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="one own update per attacker"):
        sign_flip(own, num_malicious=3, per_attacker=True)


def test_gaussian_noise_is_seeded_and_has_the_requested_moments() -> None:
    b = _benign(5, 200, 2)
    out = gaussian_noise(b, num_malicious=30, mean=0.5, std=2.0, generator=torch.Generator().manual_seed(5))
    again = gaussian_noise(b, num_malicious=30, mean=0.5, std=2.0, generator=torch.Generator().manual_seed(5))
    other = gaussian_noise(b, num_malicious=30, mean=0.5, std=2.0, generator=torch.Generator().manual_seed(6))
    assert out.shape == (30, 200) and out.dtype == b.dtype
    assert torch.equal(out, again) and not torch.equal(out, other)
    z = ((out.double() - 0.5) / 2.0).flatten().numpy()
    # 6000 standard-normal draws: mean within 4 standard errors, variance within 4·sqrt(2/n)
    assert abs(z.mean()) < 4 / math.sqrt(z.size)
    assert abs(z.var() - 1.0) < 4 * math.sqrt(2 / z.size)
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_gaussian_noise_with_tensor_mean_and_zero_std_is_the_mean() -> None:
    b = _benign(3, 10, 3)
    mu = torch.linspace(-1, 1, 10)
    out = gaussian_noise(b, num_malicious=2, mean=mu, std=0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, mu.expand(2, 10), rtol=0, atol=0)
    with pytest.raises(ValueError):
        gaussian_noise(b, num_malicious=1, std=-1.0)


def test_no_attackers_gives_an_empty_matrix() -> None:
    b = _benign(6, 8, 4)
    assert sign_flip(b, num_malicious=0).shape == (0, 8)
    assert gaussian_noise(b, num_malicious=0).shape == (0, 8)
    assert poisoning.alie_updates(b, num_malicious=0, z=1.0).shape == (0, 8)
    assert poisoning.ipm_updates(b, num_malicious=0).shape == (0, 8)
    assert poisoning.min_max_updates(b, num_malicious=0).shape == (0, 8)
    assert poisoning.fang_krum(b, num_malicious=0).shape == (0, 8)
    assert poisoning.fang_trimmed_mean(b, num_malicious=0).shape == (0, 8)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="2-D"):
        sign_flip(torch.zeros(5), num_malicious=1)
    with pytest.raises(ValueError, match="num_malicious"):
        sign_flip(torch.zeros(2, 3), num_malicious=-1)


def test_package_does_not_import_defenses() -> None:
    """Layering: the attacks package receives aggregators as callables and never imports ``defenses``."""
    pkg = Path(poisoning.__file__).parent
    for path in sorted(pkg.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "defenses" or n.startswith("defenses.") for n in names), (path.name, names)


def test_exports_resolve_and_modules_stay_modules() -> None:
    for name in poisoning.__all__:
        assert callable(getattr(poisoning, name)) or name in {"Perturbation", "Selector"}
    for mod in ("simple", "alie", "ipm", "fang", "min_max"):
        assert type(getattr(poisoning, mod)).__name__ == "module"
