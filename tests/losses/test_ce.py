"""Cross-entropy with label smoothing and with soft targets, against float64 Python loops.

Label smoothing ε over C classes: target ``q_k = (1 − ε)·[k = y] + ε / C``; loss ``−Σ_k q_k log p_k``
with ``p = softmax(logits)``. Soft targets (mixup/cutmix): the same sum with the given ``q``.
"""

from __future__ import annotations

import math

import pytest
import torch

from simprune.losses import (
    cross_entropy,
    cross_entropy_per_sample,
    smooth_targets,
    soft_cross_entropy,
    soft_cross_entropy_per_sample,
)


def ref_log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    log_norm = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_norm for v in row]


def ref_smoothed(label: int, c: int, eps: float) -> list[float]:
    return [(1 - eps) * (k == label) + eps / c for k in range(c)]


def ref_soft_ce(logits: list, targets: list) -> list[float]:
    return [-sum(q * lp for q, lp in zip(t, ref_log_softmax(row))) for row, t in zip(logits, targets)]


def _logits(b=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(b, c, generator=g), torch.randint(0, c, (b,), generator=g)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_hard_labels_match_loop(eps):
    logits, labels = _logits()
    targets = [ref_smoothed(y, 5, eps) for y in labels.tolist()]
    ref = ref_soft_ce(logits.double().tolist(), targets)
    per_sample = cross_entropy_per_sample(logits, labels, label_smoothing=eps)
    assert per_sample.shape == (6,) and per_sample.dtype == torch.float32
    assert per_sample.tolist() == pytest.approx(ref, rel=1e-5)
    assert float(cross_entropy(logits, labels, label_smoothing=eps)) == pytest.approx(sum(ref) / 6,
                                                                                      rel=1e-5)


def test_float64_stays_float64():
    logits, labels = _logits(seed=1)
    ref = ref_soft_ce(logits.double().tolist(), [ref_smoothed(y, 5, 0.1) for y in labels.tolist()])
    per_sample = cross_entropy_per_sample(logits.double(), labels, 0.1)
    assert per_sample.dtype == torch.float64
    assert per_sample.tolist() == pytest.approx(ref, rel=1e-12)


def test_half_precision_logits_are_computed_in_float32():
    logits, labels = _logits(seed=2)
    got = cross_entropy_per_sample(logits.bfloat16(), labels)
    assert got.dtype == torch.float32
    ref = ref_soft_ce(logits.bfloat16().double().tolist(),
                      [ref_smoothed(y, 5, 0.0) for y in labels.tolist()])
    assert got.tolist() == pytest.approx(ref, rel=1e-5)


def test_smooth_targets_match_formula_and_sum_to_one():
    _, labels = _logits(seed=3)
    t = smooth_targets(labels, 5, 0.2)
    assert t.shape == (6, 5)
    for row, y in zip(t.tolist(), labels.tolist()):
        assert row == pytest.approx(ref_smoothed(y, 5, 0.2), rel=1e-6)
    torch.testing.assert_close(t.sum(-1), torch.ones(6))


def test_soft_targets_match_loop_and_mixup_targets():
    """Mixed smoothed targets give ``λ·CE(y₁) + (1 − λ)·CE(y₂)`` (cross-entropy is linear in q)."""
    logits, labels = _logits(seed=4)
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    lam, eps = 0.7, 0.1
    targets = lam * smooth_targets(labels, 5, eps) + (1 - lam) * smooth_targets(labels[perm], 5, eps)
    ref = ref_soft_ce(logits.double().tolist(), targets.double().tolist())
    per_sample = soft_cross_entropy_per_sample(logits, targets)
    assert per_sample.tolist() == pytest.approx(ref, rel=1e-5)
    assert float(soft_cross_entropy(logits, targets)) == pytest.approx(sum(ref) / 6, rel=1e-5)
    mixed = lam * cross_entropy_per_sample(logits, labels, eps) + \
        (1 - lam) * cross_entropy_per_sample(logits, labels[perm], eps)
    torch.testing.assert_close(per_sample, mixed, rtol=1e-5, atol=1e-6)


def test_soft_one_hot_equals_hard():
    logits, labels = _logits(seed=5)
    torch.testing.assert_close(soft_cross_entropy_per_sample(logits, smooth_targets(labels, 5)),
                               cross_entropy_per_sample(logits, labels), rtol=1e-6, atol=1e-6)


def test_gradient_is_softmax_minus_target():
    logits, labels = _logits(seed=6)
    logits.requires_grad_(True)
    targets = smooth_targets(labels, 5, 0.1)
    soft_cross_entropy(logits, targets).backward()
    expected = (torch.softmax(logits.detach(), -1) - targets) / 6
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-7)


def test_per_sample_mean_is_the_mean_loss():
    logits, labels = _logits(b=9, seed=7)
    torch.testing.assert_close(cross_entropy_per_sample(logits, labels, 0.1).mean(),
                               cross_entropy(logits, labels, 0.1))


@pytest.mark.parametrize("eps", [-0.1, 1.0, 2.0])
def test_bad_smoothing_is_named(eps):
    logits, labels = _logits()
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(logits, labels, eps)
    with pytest.raises(ValueError, match="label_smoothing"):
        smooth_targets(labels, 5, eps)


def test_bad_shapes_are_named():
    logits, labels = _logits()
    with pytest.raises(ValueError, match="labels"):
        cross_entropy(logits, labels[:3])
    with pytest.raises(ValueError, match="targets"):
        soft_cross_entropy(logits, torch.zeros(6, 4))
