"""KoLeo equals a re-derivation in fp32 and refuses a batch of one (the reference's NaN)."""

from __future__ import annotations

import math

import pytest
import torch

from simprune.losses.koleo import koleo_loss


def reference(x: torch.Tensor, eps: float = 1e-8) -> float:
    rows = [[float(v) for v in r] for r in x.double()]
    z = []
    for r in rows:
        norm = max(math.sqrt(sum(v * v for v in r)), eps)
        z.append([v / norm for v in r])
    total = 0.0
    for i, zi in enumerate(z):
        best, nn = -math.inf, -1
        for j, zj in enumerate(z):
            if j != i:
                d = sum(a * b for a, b in zip(zi, zj))
                if d > best:
                    best, nn = d, j
        dist = math.sqrt(sum((a - b + eps) ** 2 for a, b in zip(zi, z[nn])))
        total += -math.log(dist + eps)
    return total / len(z)


@pytest.mark.parametrize("batch", [2, 3, 9])
def test_koleo_equals_re_derivation_in_fp32(batch):
    x = torch.randn(batch, 16, generator=torch.Generator().manual_seed(batch))
    got = koleo_loss(x)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(reference(x), rel=1e-5)


def test_koleo_runs_in_fp32_under_bf16_autocast():
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(7)).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = koleo_loss(x)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(reference(x.float()), rel=1e-5)


def test_gradients_flow_and_duplicates_stay_finite():
    x = torch.randn(4, 8, requires_grad=True)
    koleo_loss(x).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    dup = torch.ones(3, 8)  # all identical: distance ~eps, a large but finite loss
    assert torch.isfinite(koleo_loss(dup))


def test_batch_of_one_is_refused():
    with pytest.raises(ValueError, match="at least 2 images"):
        koleo_loss(torch.randn(1, 8))
