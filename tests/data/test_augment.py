"""Batched multi-view augmentation: shapes, statistics, geometry, randomness, colour ops."""

from __future__ import annotations

import colorsys
import math

import pytest
import torch

from simprune.data import (
    EvalTransform,
    MultiCropAugment,
    MultiCropConfig,
    Views,
    dino_augment,
    moco_v3_augment,
)
from simprune.data import augment_ops as ops
from simprune.data.augment import blur_kernel_size
from simprune.data.stats import dataset_stats

B = 16


def _images(b: int = B, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=g)


def _plain(**kw: object) -> MultiCropAugment:
    """Geometry only: no colour ops, identity normalisation."""
    cfg = dict(
        global_size=32, local_size=16, n_local=4, color_ops=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
    )
    cfg.update(kw)
    return MultiCropAugment(MultiCropConfig(**cfg))  # type: ignore[arg-type]


def test_dino_cifar_shapes_and_dtypes() -> None:
    aug = dino_augment("cifar10")
    views = aug(_images())
    assert isinstance(views, Views) and len(views.globals) == 2 and len(views.locals) == 6
    for v in views.globals:
        assert v.shape == (B, 3, 32, 32) and v.dtype == torch.float32
    for v in views.locals:
        assert v.shape == (B, 3, 16, 16) and v.dtype == torch.float32
    assert views.boxes.shape == (8, B, 4) and views.boxes.dtype == torch.float32
    assert views.flipped.shape == (8, B) and views.flipped.dtype == torch.bool
    assert views.n_views == 8 and len(views.all) == 8
    assert all(torch.isfinite(v).all() for v in views.all)
    # Normalised with the CIFAR statistics: pixel range [0, 1] maps to [-m/s, (1-m)/s].
    mean, std = torch.tensor(dataset_stats("cifar10")[0]), torch.tensor(dataset_stats("cifar10")[1])
    lo, hi = (-mean / std).reshape(1, 3, 1, 1), ((1 - mean) / std).reshape(1, 3, 1, 1)
    for v in views.all:
        assert (v >= lo - 1e-4).all() and (v <= hi + 1e-4).all()


def test_normalisation_of_a_constant_image() -> None:
    x = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    views = _plain(mean=mean, std=std)(x)
    expected = (128 / 255 - torch.tensor(mean)) / torch.tensor(std)
    for v in views.all:
        assert torch.allclose(v, expected.reshape(1, 3, 1, 1).expand_as(v), atol=1e-5)
    # uint8 and float input give the same views
    torch.manual_seed(3)
    a = _plain()(x)
    torch.manual_seed(3)
    b = _plain()(x.float() / 255)
    assert all(torch.allclose(p, q) for p, q in zip(a.all, b.all, strict=True))


@pytest.mark.parametrize("hw, max_area", [((32, 32), 1.0), ((24, 40), 0.8), ((50, 20), 0.533)])
def test_boxes_inside_image_with_scale_and_ratio(hw: tuple[int, int], max_area: float) -> None:
    h, w = hw
    torch.manual_seed(0)
    aug = _plain()
    views = aug(_images(b=256, h=h, w=w))
    bx = views.boxes
    x0, y0, x1, y1 = bx.unbind(-1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= w + 1e-4).all() and (y1 <= h + 1e-4).all()
    assert (x1 > x0).all() and (y1 > y0).all()
    area = (x1 - x0) * (y1 - y0) / (h * w)
    ratio = (x1 - x0) / (y1 - y0)
    assert (area <= 1 + 1e-5).all()
    # the centre-crop fallback keeps the ratio range too (it clamps the image's own ratio)
    assert (ratio >= 3 / 4 - 1e-4).all() and (ratio <= 4 / 3 + 1e-4).all()
    g_area, l_area = area[:2], area[2:]
    assert (l_area >= 0.05 - 1e-5).all() and (l_area <= 0.4 + 1e-5).all()
    if h == w:  # square: every global box (fallback: the whole image) is in the global range
        assert (g_area >= 0.4 - 1e-5).all()
    # the scale range is covered, not just a corner of it (a 3:5 image fits at most 0.8 with
    # a ratio <= 4/3)
    assert l_area.min() < 0.1 and l_area.max() > 0.3
    assert max_area - 0.05 < g_area.max() <= max_area + 1e-3


def test_flip_flags_follow_probability() -> None:
    torch.manual_seed(0)
    flips = _plain()(_images(b=512)).flipped.float().mean()
    assert 0.45 < flips < 0.55
    assert not _plain(flip_p=0.0)(_images()).flipped.any()
    assert _plain(flip_p=1.0)(_images()).flipped.all()


def test_deterministic_under_seed_and_rng_state() -> None:
    aug, x = dino_augment("cifar10"), _images()
    torch.manual_seed(123)
    a = aug(x)
    torch.manual_seed(123)
    b = aug(x)
    state = torch.get_rng_state()
    c = aug(x)
    torch.set_rng_state(state)
    d = aug(x)
    for p, q in ((a, b), (c, d)):
        assert torch.equal(p.boxes, q.boxes) and torch.equal(p.flipped, q.flipped)
        assert all(torch.equal(u, v) for u, v in zip(p.all, q.all, strict=True))
    assert not torch.equal(a.boxes, c.boxes)


def _coordinate_image(b: int, h: int, w: int) -> torch.Tensor:
    """Channel 0 = x, channel 1 = y of each pixel centre (pixel (i, j) covers [j, j+1))."""
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return torch.stack([xs, ys, torch.zeros_like(xs)]).expand(b, 3, h, w).clone()


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("hw", [(32, 32), (48, 64)])
def test_geometry_views_map_back_to_boxes(antialias: bool, hw: tuple[int, int]) -> None:
    h, w = hw
    torch.manual_seed(1)
    aug = _plain(antialias=antialias)
    views = aug(_coordinate_image(64, h, w))
    assert views.flipped.any() and (~views.flipped).any()
    for v, view in enumerate(views.all):
        s = view.shape[-1]
        x0, y0, x1, y1 = (t[:, None] for t in views.boxes[v].unbind(-1))
        k = (torch.arange(s) + 0.5) / s
        fx = torch.where(views.flipped[v][:, None], x1 - k * (x1 - x0), x0 + k * (x1 - x0))
        fy = y0 + k * (y1 - y0)
        # every pixel samples its own point; border clamping moves it by at most half a pixel
        assert (view[:, 0] - fx[:, None, :]).abs().max() <= 0.5 + 1e-3
        assert (view[:, 1] - fy[:, :, None]).abs().max() <= 0.5 + 1e-3
        # corners map back onto the reported box within a pixel (the extreme samples are half an
        # output pixel inside it), on the mirrored side when flipped
        half_x, half_y = 0.5 * (x1 - x0) / s, 0.5 * (y1 - y0) / s
        left = torch.where(views.flipped[v][:, None], x1 - half_x, x0 + half_x)
        right = torch.where(views.flipped[v][:, None], x0 + half_x, x1 - half_x)
        assert (view[:, 0, 0, :1] - left).abs().max() <= 1.0
        assert (view[:, 0, -1, -1:] - right).abs().max() <= 1.0
        assert (view[:, 1, :1, 0] - (y0 + half_y)).abs().max() <= 1.0
        assert (view[:, 1, -1:, 0] - (y1 - half_y)).abs().max() <= 1.0


def test_disabled_colour_ops_equal_zero_probabilities() -> None:
    """Every call draws the same random numbers whatever the probabilities."""
    x = _images()
    zero = dict(
        jitter_p=0.0,
        grayscale_p=0.0,
        blur_p_global=(0.0, 0.0),
        blur_p_local=0.0,
        solarize_p_global=(0.0, 0.0),
    )
    torch.manual_seed(5)
    a = _plain()(x)
    torch.manual_seed(5)
    b = _plain(color_ops=True, **zero)(x)
    assert torch.equal(a.boxes, b.boxes)
    assert all(torch.allclose(p, q, atol=1e-5) for p, q in zip(a.all, b.all, strict=True))
    torch.manual_seed(5)
    c = _plain(color_ops=True)(x)  # colour ops on: same geometry, different pixels
    assert torch.equal(a.boxes, c.boxes) and not torch.allclose(a.globals[0], c.globals[0])


def test_grayscale_input_keeps_one_channel() -> None:
    aug = dino_augment("fashion_mnist")
    views = aug(_images(c=1, h=28, w=28))
    assert views.globals[0].shape == (B, 1, 28, 28) and views.locals[0].shape == (B, 1, 16, 16)
    assert all(torch.isfinite(v).all() for v in views.all)
    with pytest.raises(ValueError, match="1 channels but mean/std have 3"):
        dino_augment("cifar10")(_images(c=1))
    with pytest.raises(TypeError, match="uint8 or floating"):
        dino_augment("cifar10")(_images().int())


def test_moco_v3_two_crops() -> None:
    mean, std = dataset_stats("cifar10")
    torch.manual_seed(0)
    views = moco_v3_augment(32, mean, std)(_images(b=256))
    assert len(views.globals) == 2 and views.locals == []
    assert views.boxes.shape == (2, 256, 4) and views.globals[1].shape == (256, 3, 32, 32)
    x0, y0, x1, y1 = views.boxes.unbind(-1)
    area = (x1 - x0) * (y1 - y0) / 1024
    assert area.min() >= 0.08 - 1e-5 and area.min() < 0.2


def test_eval_transform() -> None:
    x = _images()
    mean, std = dataset_stats("cifar10")
    out = EvalTransform(32, mean, std)(x)
    expected = (x.float() / 255 - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(
        1, 3, 1, 1
    )
    assert torch.allclose(out, expected, atol=1e-6)
    big = EvalTransform(16, resize_size=20)(_images(h=40, w=80))
    assert big.shape == (B, 3, 16, 16)
    with pytest.raises(ValueError, match="resize_size"):
        EvalTransform(32, resize_size=16)


def test_colour_primitives() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 4, 4, generator=g)
    x[0] = 0.3  # grey pixels keep their value under any hue shift
    shift = torch.rand(6, generator=g) - 0.5
    y = ops.adjust_hue(x, shift)
    for n in range(6):
        for i in range(4):
            for j in range(4):
                h, s, v = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
                ref = colorsys.hsv_to_rgb((h + float(shift[n])) % 1, s, v)
                assert torch.allclose(y[n, :, i, j], torch.tensor(ref), atol=1e-5)
    sig = torch.tensor([1e-3, 0.5, 2.0, 1.0, 1.0, 1.0])
    blurred = ops.gaussian_blur(x, sig, 3)
    assert torch.allclose(blurred[0], x[0]) and not torch.allclose(blurred[2], x[2])
    const = torch.full((6, 3, 8, 8), 0.7)
    assert torch.allclose(ops.gaussian_blur(const, sig, 5), const)
    on = torch.tensor([True, False, True, False, True, False])
    sol = ops.solarize(x, on)
    assert torch.equal(sol[1], x[1]) and torch.allclose(sol[2], torch.where(x[2] >= 0.5, 1 - x[2], x[2]))
    gray = ops.grayscale(x, on)
    assert torch.allclose(gray[2, 0], gray[2, 1]) and torch.equal(gray[3], x[3])
    assert blur_kernel_size(224) == 23 and blur_kernel_size(32) == 3 and blur_kernel_size(96) == 11


def test_box_sampler_fallback_and_errors() -> None:
    u = torch.ones(4, 2 * ops.N_TRIES + 2) * 0.999  # scale 1 with ratio 4/3 never fits
    boxes = ops.sample_crop_boxes(u, 30, 30, (0.99, 1.0))
    assert torch.allclose(boxes, torch.tensor([0.0, 0.0, 30.0, 30.0]).expand(4, 4))
    tall = ops.sample_crop_boxes(u, 90, 30, (0.99, 1.0))  # ratio 1/3 clamps to 3/4
    assert torch.allclose(tall[0], torch.tensor([0.0, 25.0, 30.0, 65.0]))
    with pytest.raises(ValueError, match="scale"):
        ops.sample_crop_boxes(u, 30, 30, (0.5, 1.5))
    assert math.isclose(ops.supersample_factor(32, 32, 32, 1.0), 1)
    assert ops.supersample_factor(32, 32, 16, 0.4) == 1  # at most 1.46x down: plain bilinear
    assert ops.supersample_factor(500, 500, 224, 1.0) == 2
    assert ops.supersample_factor(64, 64, 8, 1.0) == 4


def test_no_host_sync_runs_on_meta_device() -> None:
    """Meta tensors have no data: any ``.item()``/``.cpu()``/``.tolist()`` on them would fail, so
    running on ``meta`` shows the forward never reads values back to the host (CUDA-safe)."""
    x = torch.empty(4, 3, 32, 32, dtype=torch.uint8, device="meta")
    views = dino_augment("cifar10").to("meta")(x)
    assert views.boxes.device.type == "meta" and views.locals[0].shape == (4, 3, 16, 16)
    assert moco_v3_augment(32)(x).globals[0].device.type == "meta"  # buffers moved on the fly
    assert EvalTransform(16)(torch.empty(2, 3, 40, 48, device="meta")).shape == (2, 3, 16, 16)


def test_config_errors_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match="blur_p_global"):
        MultiCropAugment(MultiCropConfig(32, 16, 2, blur_p_global=(1.0,)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="jitter_p .*1.5"):
        MultiCropAugment(MultiCropConfig(32, 16, 2, jitter_p=1.5))
    with pytest.raises(ValueError, match="n_local"):
        MultiCropAugment(MultiCropConfig(32, 16, -1))
    with pytest.raises(KeyError, match="cifar10"):
        dino_augment("svhn")
    with pytest.raises(TypeError):
        dino_augment("cifar10", not_a_field=1)
