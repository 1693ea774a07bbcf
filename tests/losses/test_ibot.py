"""iBOT's masked-patch loss equals a loop re-derivation of DINOv2's ``forward_masked`` weighting."""

from __future__ import annotations

import math

import pytest
import torch

from simprune.losses.ibot import ibot_loss, ibot_per_image, ibot_weights, masked_center_stats


def reference(student, teacher_probs, rows, valid, num_images, temp):
    """Each image: the mean over its valid masked positions of −Σ t log softmax(s/τ); summed over
    images and divided by all images (masked or not)."""
    total = 0.0
    for img in range(num_images):
        terms = []
        for t in range(len(rows)):
            if rows[t] == img and valid[t]:
                s = [v / temp for v in student[t].tolist()]
                m = max(s)
                lse = m + math.log(sum(math.exp(v - m) for v in s))
                terms.append(-sum(p * (v - lse) for p, v in zip(teacher_probs[t].tolist(), s)))
        if terms:
            total += sum(terms) / len(terms)
    return total / num_images


def case(seed=0, t=13, k=7, num_images=5):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(t, k, generator=g)
    teacher = torch.softmax(torch.randn(t, k, generator=g) / 0.3, dim=-1)
    rows = torch.randint(0, num_images - 1, (t,), generator=g)  # the last image is unmasked
    valid = torch.rand(t, generator=g) > 0.3
    return student, teacher, rows, valid, num_images


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ibot_loss_equals_re_derivation(seed):
    student, teacher, rows, valid, n = case(seed)
    w = ibot_weights(rows, valid, n)
    got = ibot_loss(student, teacher, w, n, 0.1)
    want = reference(student, teacher, rows.tolist(), valid.tolist(), n, 0.1)
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    per = ibot_per_image(student, teacher, w, rows, n, 0.1)
    assert per.mean().item() == pytest.approx(got.item(), rel=1e-5)
    assert per[n - 1] == 0  # an unmasked image contributes nothing, but counts in the mean


def test_no_valid_position_gives_zero_and_gradients_flow():
    student, teacher, rows, _, n = case(3)
    student.requires_grad_(True)
    none = torch.zeros_like(rows, dtype=torch.bool)
    loss = ibot_loss(student, teacher, ibot_weights(rows, none, n), n, 0.1)
    assert loss.item() == 0.0
    valid = torch.ones_like(rows, dtype=torch.bool)
    ibot_loss(student, teacher, ibot_weights(rows, valid, n), n, 0.1).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_center_statistics_cover_the_valid_positions_only():
    logits = torch.arange(12.0).view(4, 3)
    total, count = masked_center_stats(logits, torch.tensor([0.5, 0.0, 0.25, 0.0]))
    assert count.item() == 2
    torch.testing.assert_close(total, (logits[0] + logits[2]).unsqueeze(0))
