"""Reconstruction metrics: closed forms, SSIM against scikit-image, Hungarian matching, scoring."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from attacks.base import Reconstruction
from attacks.metrics import (
    LPIPS_SKIPPED,
    label_accuracy,
    lpips,
    lpips_available,
    match_batch,
    mse,
    psnr,
    score_reconstruction,
    ssim,
)


def test_mse_and_psnr_closed_forms():
    x = torch.zeros(3, 1, 5, 5)
    c = torch.tensor([0.1, 0.5, 1.0]).view(3, 1, 1, 1)
    y = x + c
    assert torch.allclose(mse(x, y), torch.tensor([0.01, 0.25, 1.0], dtype=torch.float64))
    # PSNR = 10 log10(1 / c²) = −20 log10(c)
    assert torch.allclose(psnr(x, y), -20 * torch.log10(c.flatten().double()), atol=1e-9)
    assert psnr(y, y)[0].item() == math.inf


def test_higher_is_better_flags():
    assert psnr.higher_is_better and ssim.higher_is_better and label_accuracy.higher_is_better
    assert not mse.higher_is_better and not lpips.higher_is_better


@pytest.mark.parametrize("channels,size,noise", [(3, 32, 0.1), (1, 16, 0.3), (3, 24, 0.02)])
def test_ssim_matches_skimage(channels, size, noise):
    g = torch.Generator().manual_seed(channels * size)
    x = torch.rand(2, channels, size, size, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # some structure
    y = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ours = ssim(x, y)
    for i in range(2):
        ref = structural_similarity(
            x[i].permute(1, 2, 0).numpy(),
            y[i].permute(1, 2, 0).numpy(),
            channel_axis=2,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        assert abs(float(ours[i]) - float(ref)) < 1e-3
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))


def test_hungarian_matching_recovers_a_permutation():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(6, 3, 8, 8, generator=g)
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    recon = truth[perm] + 0.01 * torch.randn(truth.shape, generator=g)
    order = match_batch(recon, truth)
    assert torch.equal(perm[torch.as_tensor(order)], torch.arange(6))


def test_label_accuracy_is_order_free():
    assert label_accuracy(torch.tensor([2, 1, 1]), torch.tensor([1, 2, 1])) == 1.0
    assert label_accuracy(torch.tensor([0, 0]), torch.tensor([0, 1])) == 0.5
    assert math.isnan(label_accuracy(None, torch.tensor([1])))


def test_score_reconstruction_matches_before_scoring():
    g = torch.Generator().manual_seed(1)
    truth = torch.rand(4, 3, 16, 16, generator=g)
    perm = torch.tensor([2, 3, 0, 1])
    noisy = (truth + 0.05 * torch.randn(truth.shape, generator=g)).clamp(0, 1)
    out = score_reconstruction(
        Reconstruction(images=noisy[perm], labels=torch.tensor([1, 2, 3, 9])),
        truth,
        torch.tensor([3, 2, 1, 0]),
    )
    direct = psnr(noisy, truth)
    assert abs(out["psnr"] - float(direct.mean())) < 1e-9
    assert [p["psnr"] for p in out["per_image"]] == pytest.approx(direct.tolist())
    assert out["label_accuracy"] == 0.75
    assert out["ssim"] == pytest.approx(float(ssim(noisy, truth).mean()))
    if lpips_available():
        assert out["lpips"] is not None
    else:
        assert out["lpips"] is None and out["lpips_note"] == LPIPS_SKIPPED


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        psnr(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    np.testing.assert_equal(match_batch(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)), [0])
