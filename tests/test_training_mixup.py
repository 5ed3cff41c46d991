"""Mixup in local training (Zhang et al., ICLR 2018): the loss is cross-entropy on the mixed soft label,
λ is Beta(α, α) and seeded, and record-level DP refuses it at load time."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simulator.scenario import ScenarioError, load_scenario
from simulator.training import LocalTrainConfig, mixup_lambda, mixup_loss, train_local


def test_mixup_loss_is_cross_entropy_on_the_mixed_soft_label() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = mixup_loss(model, x, y, alpha=0.4, label_smoothing=0.1, generator=g1)
    lam = mixup_lambda(0.4, g2)
    perm = torch.randperm(6, generator=g2)
    soft = lam * F.one_hot(y, 3).float() + (1 - lam) * F.one_hot(y[perm], 3).float()
    soft = soft * 0.9 + 0.1 / 3  # label smoothing of the mixed target
    want = -(soft * F.log_softmax(model(lam * x + (1 - lam) * x[perm]), -1)).sum(-1).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_mixup_lambda_is_beta_distributed_and_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    lams = np.array([mixup_lambda(0.5, g) for _ in range(4000)])
    assert lams.min() >= 0 and lams.max() <= 1
    assert lams.mean() == pytest.approx(0.5, abs=0.02)
    assert lams.var() == pytest.approx(0.25 / 2.0, abs=0.01)  # Beta(α, α): var = 1 / (4(2α + 1)) = 0.125
    again = torch.Generator().manual_seed(0)
    assert mixup_lambda(0.5, again) == lams[0]


def test_training_with_mixup_changes_the_update_and_is_reproducible() -> None:
    x, y = torch.rand(32, 1, 4, 4), torch.randint(0, 3, (32,))

    def run(alpha: float) -> torch.Tensor:
        torch.manual_seed(1)
        m = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        train_local(
            m,
            x,
            y,
            LocalTrainConfig(batch_size=8, lr=0.1, mixup_alpha=alpha),
            generator=torch.Generator().manual_seed(2),
        )
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    assert torch.equal(run(1.0), run(1.0))
    assert not torch.allclose(run(1.0), run(0.0))


def test_mixup_with_record_level_dp_is_refused() -> None:
    with pytest.raises(ScenarioError) as e:
        load_scenario("scenarios/dp_sgd.toml", ["federation.mixup_alpha=0.2"])
    assert "federation.mixup_alpha: 0.2 with record-level DP" in str(e.value)
