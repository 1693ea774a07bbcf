"""The augmentation runs unchanged on CUDA, without host syncs (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from simprune.data import EvalTransform, dino_augment, moco_v3_augment
from simprune.data import augment_ops as ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _images(b: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, generator=g)


def test_forward_on_cuda_has_no_host_sync() -> None:
    x = _images().cuda()
    aug = dino_augment("cifar10").cuda()
    two = moco_v3_augment(32).cuda()
    ev = EvalTransform(24, resize_size=28).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        views = aug(x)
        pair = two(x)
        evaluated = ev(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(v.is_cuda for v in views.all) and views.boxes.is_cuda and views.flipped.is_cuda
    assert views.locals[0].shape == (32, 3, 16, 16) and pair.boxes.shape == (2, 32, 4)
    assert evaluated.shape == (32, 3, 24, 24)
    assert all(torch.isfinite(v).all() for v in views.all)


def test_cuda_reproducible_under_seed() -> None:
    x = _images().cuda()
    aug = dino_augment("cifar10").cuda()
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    b = aug(x)
    assert torch.equal(a.boxes, b.boxes)
    assert all(torch.equal(p, q) for p, q in zip(a.all, b.all, strict=True))


def test_crop_and_colour_ops_match_cpu() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 32, 32, generator=g)
    boxes = ops.sample_crop_boxes(torch.rand(16, 22, generator=g), 32, 32, (0.1, 1.0))
    boxes = boxes.reshape(2, 8, 4)
    flipped = torch.rand(2, 8, generator=g) < 0.5
    cpu = ops.crop_resize(x, boxes, flipped, 16, 2)
    gpu = ops.crop_resize(x.cuda(), boxes.cuda(), flipped.cuda(), 16, 2)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
    shift = torch.rand(16, generator=g) - 0.5
    torch.testing.assert_close(
        ops.adjust_hue(cpu.cuda(), shift.cuda()).cpu(), ops.adjust_hue(cpu, shift), atol=1e-5, rtol=1e-5
    )
    sigma = torch.rand(16, generator=g) * 2
    torch.testing.assert_close(
        ops.gaussian_blur(cpu.cuda(), sigma.cuda(), 3).cpu(),
        ops.gaussian_blur(cpu, sigma, 3),
        atol=1e-5,
        rtol=1e-5,
    )
