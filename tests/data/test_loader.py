"""The streamed path: worker processes, crops cut from whole images, one-line errors from workers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simprune.data import CorruptImageError, load_dataset
from simprune.data.augment import dino_augment
from simprune.data.crops import Crops, crop_spec, cut_crops, draft_request
from simprune.data.loader import StepBatches, TrainLoader, default_workers, resolve_workers, sample_seed
from simprune.data.sampler import ResumableSampler

SEED = 3


def photo_folder(root: Path, n: int = 6, size=(90, 70), classes=("a", "b")) -> Path:
    """``root/train/<class>/*.jpg``: noisy gradients, ``size = (W, H)``."""
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        d = root / "train" / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            yy, xx = np.mgrid[0:size[1], 0:size[0]]
            arr = np.stack([xx * 2.0, yy * 3.0, np.full_like(xx, 60 * k)], -1)
            arr = arr + rng.normal(0, 15, (size[1], size[0], 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(d / f"{i:02d}.jpg", quality=92)
    return root


def small_augment():
    return dino_augment("imagefolder", global_size=32, local_size=16, n_local=2)


def source(ds, spec, batch=4, rank=0, world=1):
    sampler = ResumableSampler(torch.arange(len(ds)), batch, SEED, rank, world)
    return StepBatches(ds, sampler, sampler.steps_per_epoch, SEED, rank, world, spec=spec)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return photo_folder(tmp_path_factory.mktemp("photos"))


def _load(root: Path):
    return load_dataset("imagefolder", root, "train", cache_dir=root / "cache", load_size=37, cache_mb=0)


def _same(a, b) -> None:
    (ia, la, xa), (ib, lb, xb) = a, b
    assert torch.equal(la, lb) and torch.equal(xa, xb)
    if isinstance(ia, Crops):
        assert all(torch.equal(p, q) for p, q in zip(ia.groups, ib.groups))
        assert torch.equal(ia.boxes, ib.boxes)
    else:
        assert torch.equal(ia, ib)


@pytest.mark.parametrize("crops", [True, False], ids=["whole-image crops", "load_size squares"])
def test_workers_on_and_off_give_the_same_batches(folder, crops):
    ds = _load(folder)
    assert ds.streamed
    src = source(ds, crop_spec(small_augment()) if crops else None)
    off, on = TrainLoader(src, 0, stop=8), TrainLoader(src, 2, stop=8)
    # steps 1..4 in order (prefetched), then a jump back to 2 (the iterator restarts there)
    for step in (1, 2, 3, 4, 2):
        _same(off.get(step), on.get(step))
    on.close()
    images, labels, idx = off.get(5)
    assert isinstance(images, Crops) == crops and len(idx) == 4
    assert torch.equal(labels, ds.labels[idx])


def _rrc_reference(height, width, scale, ratio, gen):
    """torchvision's RandomResizedCrop.get_params, written from its documentation."""
    area = height * width
    lr = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
        aspect = math.exp(torch.empty(1).uniform_(lr[0], lr[1], generator=gen).item())
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=gen).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=gen).item()
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def test_crop_geometry_is_random_resized_crops_of_the_whole_image(folder):
    ds = _load(folder)
    aug = small_augment()
    spec = crop_spec(aug)
    assert [(g.size, g.scale, g.n_views) for g in spec.groups] == [(32, (0.4, 1.0), 2), (16, (0.05, 0.4), 2)]
    src = source(ds, spec)
    step = 2
    images, _, idx = src.make(step)
    for j, row in enumerate(idx.tolist()):
        path = ds.samples[row][0]
        with Image.open(path) as im:
            original = im.convert("RGB")
        width, height = original.size
        gen = torch.Generator().manual_seed(sample_seed(SEED, step, j))
        views = [(g, v) for g in range(len(spec.groups)) for v in range(spec.groups[g].n_views)]
        for k, (g, v) in enumerate(views):
            group = spec.groups[g]
            top, left, h, w = _rrc_reference(height, width, group.scale, spec.ratio, gen)
            assert images.boxes[j, k].tolist() == [left, top, left + w, top + h]
            # the pixels: that box of the full-size photo, resized bicubically to the view size
            want = original.resize((group.size, group.size), Image.Resampling.BICUBIC,
                                   box=(left, top, left + w, top + h))
            got = images.groups[g][j, v].permute(1, 2, 0).numpy()
            assert np.array_equal(got, np.asarray(want))
    # the device augmentation keeps those boxes (globals first) and only flips / colours the views
    views = aug(images)
    assert torch.equal(views.boxes, images.boxes.transpose(0, 1))
    assert views.globals[0].shape == (4, 3, 32, 32) and views.locals[1].shape == (4, 3, 16, 16)


def test_a_large_jpeg_is_decoded_at_a_reduced_dct_scale(tmp_path):
    rng = np.random.default_rng(1)
    arr = np.clip(rng.normal(128, 30, (1200, 1600, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(arr).save(path, quality=90)
    spec = crop_spec(dino_augment("imagefolder", global_size=64, local_size=32, n_local=1,
                                  global_scale=(0.9, 1.0), local_scale=(0.5, 0.6)))
    gen = torch.Generator().manual_seed(0)
    groups, boxes = cut_crops(path, spec, gen)
    assert groups[0].shape == (2, 3, 64, 64) and groups[1].shape == (1, 3, 32, 32)
    sides = (boxes[:, 2:] - boxes[:, :2]).min(dim=1).values
    f = min(float(sides[0]) / 64, float(sides[1]) / 64, float(sides[2]) / 32)
    req = draft_request(1600, 1200, [(0, 0, int(s), int(s)) for s in sides.tolist()], [64, 64, 32])
    assert req[0] <= math.ceil(1600 / f) and f > 8  # every crop is > 8x its view: 1/8 scale allowed
    with Image.open(path) as im:
        im.draft("RGB", req)
        assert im.size[0] <= 1600 // 4  # PIL decodes at most a quarter of the side here


def test_a_corrupt_jpeg_in_a_worker_is_the_same_one_line_error(tmp_path):
    root = photo_folder(tmp_path / "data", n=4)
    bad = root / "train" / "b" / "01.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    ds = _load(root)
    src = source(ds, crop_spec(small_augment()), batch=8)  # one batch holds every image
    errors = []
    for workers in (0, 2):
        with pytest.raises(CorruptImageError) as info:
            TrainLoader(src, workers, stop=3).get(0)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert "\n" not in errors[0] and f"cannot decode image '{bad}'" in errors[0]


def test_num_workers_values():
    assert resolve_workers(0) == 0 and resolve_workers(3) == 3
    assert resolve_workers(-1) == default_workers() >= 1
    with pytest.raises(ValueError, match="num_workers must be a whole number >= 0"):
        resolve_workers(-2)
