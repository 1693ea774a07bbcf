"""Grid maps from ``ids`` / ``source`` and the geometry that maps a view's patches back."""

from __future__ import annotations

import pytest
import torch

from simprune.data.augment_ops import crop_resize
from simprune.viz.masks import (
    DROPPED,
    FUSED,
    KEPT,
    MERGED,
    alive_from_source,
    grid_shape,
    kept_from_ids,
    merge_groups,
    num_groups,
    patch_boxes,
    patch_status,
    pixel_to_patch,
    to_original,
)


def test_grid_shape():
    assert grid_shape(64) == (8, 8)
    assert grid_shape(6, (2, 3)) == (2, 3)
    with pytest.raises(ValueError, match="square"):
        grid_shape(6)
    with pytest.raises(ValueError, match="2x2"):
        grid_shape(6, (2, 2))


def test_kept_from_ids_ignores_synthetic_tokens():
    ids = torch.tensor([[0, 5, 3, -1], [8, 1, 2, 7]])
    kept = kept_from_ids(ids, 9)
    assert kept.shape == (2, 3, 3)
    assert kept[0].flatten().nonzero().flatten().tolist() == [0, 3, 5]
    assert kept[1].flatten().nonzero().flatten().tolist() == [1, 2, 7, 8]


def test_status_pruning_fusing_and_merging():
    # 2x2 grid. Pruning: patches 0 and 3 kept (positions 0, 1), 1 and 2 dropped.
    ids = torch.tensor([[0, 3]])
    source = torch.tensor([[0, -1, -1, 1]])
    assert patch_status(ids, source).flatten().tolist() == [KEPT, DROPPED, DROPPED, KEPT]
    assert torch.equal(alive_from_source(source), kept_from_ids(ids, 4))
    # EViT: 0 and 3 kept, 1 and 2 fused into the synthetic token at position 2.
    ids = torch.tensor([[0, 3, -1]])
    source = torch.tensor([[0, 2, 2, 1]])
    assert patch_status(ids, source).flatten().tolist() == [KEPT, FUSED, FUSED, KEPT]
    # ToMe: 0 merged into 1's token, 2 and 3 on their own.
    ids = torch.tensor([[1, 2, 3]])
    source = torch.tensor([[0, 0, 1, 2]])
    assert patch_status(ids, source).flatten().tolist() == [MERGED, KEPT, KEPT, KEPT]
    groups = merge_groups(source)
    assert groups.flatten().tolist() == [0, 0, 1, 2]
    assert num_groups(groups).tolist() == [3]


def test_status_kept_equals_ids_after_two_points():
    # N0 = 6; point 1 keeps originals [5, 1, 4] (positions 0..2); point 2 keeps positions [2, 0]
    ids = torch.tensor([[4, 5]])
    source = torch.tensor([[-1, -1, -1, -1, 0, 1]])
    status = patch_status(ids, source, (2, 3))
    assert torch.equal(status == KEPT, kept_from_ids(ids, 6, (2, 3)))


def test_patch_boxes_plain_and_flipped():
    boxes = torch.tensor([[8.0, 4.0, 24.0, 20.0], [8.0, 4.0, 24.0, 20.0]])
    rects = patch_boxes(boxes, torch.tensor([False, True]), (4, 4))
    assert rects.shape == (2, 4, 4, 4)
    assert rects[0, 1, 0].tolist() == [8.0, 8.0, 12.0, 12.0]
    assert rects[0, 3, 3].tolist() == [20.0, 16.0, 24.0, 20.0]
    assert rects[1, 1, 0].tolist() == [20.0, 8.0, 24.0, 12.0]  # view column 0 is the box's right
    assert rects[1, 1, 3].tolist() == [8.0, 8.0, 12.0, 12.0]


def test_to_original_marks_the_patch_rectangles():
    values = torch.zeros(2, 4, 4, dtype=torch.long)
    values[:, 1, 0] = 1  # one patch: row 1, column 0 of the view
    boxes = torch.tensor([[8.0, 4.0, 24.0, 20.0]] * 2)
    raster = to_original(values, boxes, torch.tensor([False, True]), (32, 32), fill=-1)
    assert raster.shape == (2, 32, 32)
    expected_plain = torch.full((32, 32), -1)
    expected_plain[4:20, 8:24] = 0
    expected_plain[8:12, 8:12] = 1
    assert torch.equal(raster[0], expected_plain)
    expected_flip = torch.full((32, 32), -1)
    expected_flip[4:20, 8:24] = 0
    expected_flip[8:12, 20:24] = 1
    assert torch.equal(raster[1], expected_flip)


def test_to_original_fractional_box_and_supersampling():
    values = torch.arange(8).reshape(1, 1, 8).expand(1, 8, 8).clone()  # value = view column
    boxes = torch.tensor([[2.5, 3.0, 26.5, 27.0]])  # 24 px wide: 3 px per patch
    r = to_original(values, boxes, torch.tensor([False]), (32, 32), fill=-1)
    row = r[0, 10]
    assert row[:2].tolist() == [-1, -1]  # centres 0.5, 1.5 left of the box
    assert row[2:5].tolist() == [0, 0, 0]  # centres 2.5, 3.5, 4.5 in [2.5, 5.5)
    assert row[5].item() == 1 and row[26].item() == -1
    fine = to_original(values, boxes, torch.tensor([True]), (32, 32), fill=-1, scale=2)
    assert fine.shape == (1, 64, 64)
    # flipped: view column 0 covers x in [23.5, 26.5), sub-pixel centres 23.75 .. 26.25
    assert fine[0, 20, 47:53].tolist() == [0] * 6 and fine[0, 20, 46].item() == 1
    assert fine[0, 20, 53].item() == -1


def test_pixel_to_patch_agrees_with_patch_boxes():
    g = torch.Generator().manual_seed(3)
    b, grid, size, scale = 16, (7, 5), (30, 40), 2
    xy0 = torch.rand(b, 2, generator=g) * torch.tensor([20.0, 15.0])
    wh = 2 + torch.rand(b, 2, generator=g) * torch.tensor([18.0, 13.0])
    boxes = torch.cat([xy0, xy0 + wh], 1)
    flipped = torch.rand(b, generator=g) < 0.5
    index = pixel_to_patch(boxes, flipped, grid, size, scale)
    rects = patch_boxes(boxes, flipped, grid).reshape(b, -1, 4)
    ys = (torch.arange(size[0] * scale) + 0.5) / scale
    xs = (torch.arange(size[1] * scale) + 0.5) / scale
    yy, xx = ys[:, None].expand(-1, xs.numel()), xs[None].expand(ys.numel(), -1)
    for i in range(b):
        r = rects[i][index[i].clamp(min=0)]  # [H, W, 4] rectangle of each pixel's patch
        inside = (xx >= r[..., 0] - 1e-9) & (xx <= r[..., 2] + 1e-9) & (yy >= r[..., 1] - 1e-9) & (
            yy <= r[..., 3] + 1e-9)
        assert inside[index[i] >= 0].all()
        x0, y0, x1, y1 = boxes[i].double()
        in_box = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        assert torch.equal(index[i] >= 0, in_box)


@pytest.mark.parametrize("flip", [False, True])
def test_geometry_matches_the_real_crop(flip):
    """A ramp image tells, at every view pixel, where in the original it was sampled from: the
    centre pixel of every view patch must come from that patch's rectangle."""
    h, w, s, p = 40, 48, 32, 4
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    image = torch.stack([xs[None].expand(h, w), ys[:, None].expand(h, w)])[None]  # [1, 2, H, W]
    boxes = torch.tensor([[[5.3, 7.1, 41.9, 33.6]]], dtype=torch.float64)
    flipped = torch.tensor([[flip]])
    view = crop_resize(image, boxes, flipped, s)[0]  # [2, S, S]: sampled x and y
    rects = patch_boxes(boxes[0], flipped[0], (s // p, s // p))[0]
    centre = view[:, p // 2 :: p, p // 2 :: p]  # [2, gh, gw] sample near each patch centre
    assert ((centre[0] > rects[..., 0]) & (centre[0] < rects[..., 2])).all()
    assert ((centre[1] > rects[..., 1]) & (centre[1] < rects[..., 3])).all()
