"""MAE's pixel loss and PCAE's feature loss, each against a loop written here."""

from __future__ import annotations

import math

import pytest
import torch

from simprune.losses.mim import (
    feature_cosine_loss,
    feature_cosine_per_sample,
    mae_loss,
    mae_loss_per_sample,
    patchify,
    pixel_targets,
    standardise,
    unpatchify,
)


def test_patchify_is_row_major_and_inverts():
    x = torch.randn(2, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 48)
    # patch 1 is the top-right 4x4 block; values ordered (row, column, channel)
    assert torch.equal(p[:, 1].reshape(2, 4, 4, 3), x[:, :, :4, 4:].permute(0, 2, 3, 1))
    assert torch.equal(unpatchify(p, 4, 3), x)


def test_pixel_targets_standardise_each_patch_over_its_values():
    x = torch.randn(2, 3, 8, 8) * 5 + 2
    ids = torch.tensor([[3, 0], [1, 2]])
    t = pixel_targets(x, 4, ids, norm_pix=True)
    raw = pixel_targets(x, 4, ids, norm_pix=False)
    for b in range(2):
        for j in range(2):
            patch = patchify(x, 4)[b, ids[b, j]]
            assert torch.equal(raw[b, j], patch)
            mean, var = patch.mean(), patch.var(unbiased=False)
            torch.testing.assert_close(t[b, j], (patch - mean) / math.sqrt(var + 1e-6))


def test_mae_loss_equals_a_loop_over_masked_patches():
    torch.manual_seed(0)
    pred, target = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    per = []
    for b in range(3):
        terms = [sum((pred[b, j, v] - target[b, j, v]) ** 2 for v in range(7)) / 7 for j in range(5)]
        per.append(sum(terms) / 5)
    torch.testing.assert_close(mae_loss_per_sample(pred, target), torch.stack(per))
    torch.testing.assert_close(mae_loss(pred, target), torch.stack(per).mean())


def test_mae_loss_reads_only_the_masked_patches():
    """The targets are gathered at the masked ids; pixels of any other patch never enter."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8)
    masked = torch.tensor([[1, 2, 3], [0, 2, 3]])  # patch 0 (sample 0) and 1 (sample 1) visible
    pred = torch.randn(2, 3, 48)
    loss = mae_loss(pred, pixel_targets(x, 4, masked))
    y = x.clone()
    y[0, :, :4, :4] = 100.0  # patch 0 of sample 0
    y[1, :, :4, 4:] = -7.0  # patch 1 of sample 1
    assert torch.equal(mae_loss(pred, pixel_targets(y, 4, masked)), loss)
    y[0, :, 4:, :4] = 3.0  # a masked patch does change it
    assert not torch.equal(mae_loss(pred, pixel_targets(y, 4, masked)), loss)


def test_feature_loss_equals_a_loop():
    torch.manual_seed(2)
    pred, teacher = torch.randn(2, 6, 10), torch.randn(2, 6, 10) * 3 + 1
    per = []
    for b in range(2):
        terms = []
        for j in range(6):
            t = teacher[b, j]
            t = (t - t.mean()) / torch.sqrt(t.var(unbiased=False) + 1e-6)
            p = pred[b, j]
            terms.append(1 - (p @ t) / (p.norm() * t.norm()))
        per.append(sum(terms) / 6)
    torch.testing.assert_close(feature_cosine_per_sample(pred, teacher), torch.stack(per))
    torch.testing.assert_close(feature_cosine_loss(pred, teacher), torch.stack(per).mean())


def test_feature_loss_ignores_the_targets_scale_and_sends_no_gradient_to_the_teacher():
    pred = torch.randn(2, 3, 8, requires_grad=True)
    teacher = torch.randn(2, 3, 8, requires_grad=True)
    a = feature_cosine_loss(pred, teacher)
    torch.testing.assert_close(a, feature_cosine_loss(pred, teacher * 4.0))
    a.backward()
    assert pred.grad is not None and teacher.grad is None
    assert torch.allclose(standardise(teacher).mean(-1), torch.zeros(2, 3), atol=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ"):
        mae_loss(torch.zeros(1, 2, 3), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="differ"):
        feature_cosine_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))
