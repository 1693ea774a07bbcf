"""Acceptance: the masks sit on the right patches of the original image.

A hand-made point record (known ``ids`` / ``source``), known crop boxes (one flipped, neither the
whole image) and a synthetic image whose content marks where each patch should land.
"""

from __future__ import annotations

import numpy as np
import torch

from simprune.drive import PointRecord
from simprune.viz.masks import DROPPED, FUSED, KEPT, kept_from_ids, to_original
from simprune.viz.overlay import STATUS_RGBA, original_rgba, point_rgba

H = W = 64
GRID = (4, 4)
# view 1: box x 16..48, y 8..40 (8 px per patch), plain; view 2: box x 0..48, y 16..64, flipped
BOXES = torch.tensor([[16.0, 8.0, 48.0, 40.0], [0.0, 16.0, 48.0, 64.0]])
FLIPPED = torch.tensor([False, True])


def record() -> PointRecord:
    """Per view: keep the top-left and bottom-right patches of the view and view column 1 of row 2;
    view 2 fuses everything else into a synthetic token (EViT)."""
    keep = [0, 9, 15]  # (0, 0), (2, 1), (3, 3)
    ids = torch.tensor([keep + [-1], keep + [-1]])
    source = torch.full((2, 16), -1)
    for pos, patch in enumerate(keep):
        source[:, patch] = pos
    source[1][source[1] < 0] = 3  # view 2: the rest in the fused token
    ids[0, 3] = 2  # view 1 keeps patch 2 instead of a fused token
    source[0, 2] = 3
    return PointRecord(block=4, tokens_in=16, tokens_out=4, ids=ids, source=source)


def alpha_at(rgba: np.ndarray, x: float, y: float) -> tuple:
    """RGBA of the pixel holding the point ``(x, y)``, rounded to 3 decimals."""
    return _r(rgba[int(y), int(x)])


def _r(rgba) -> tuple:
    return tuple(round(float(c), 3) for c in rgba)


def test_overlay_pixels_at_the_expected_places():
    rec = record()
    rgba = original_rgba(rec.ids, rec.source, GRID, BOXES, FLIPPED, (H, W))
    assert rgba.shape == (2, H, W, 4)
    kept, dropped, fused, outside = (_r(STATUS_RGBA[s]) for s in (KEPT, DROPPED, FUSED, -1))
    v1, v2 = rgba
    # view 1, plain: patch (r, c) covers x 16+8c .. 24+8c, y 8+8r .. 16+8r
    assert alpha_at(v1, 17, 9) == kept  # (0, 0)
    assert alpha_at(v1, 35, 9) == kept  # (0, 2) = patch 2
    assert alpha_at(v1, 25, 25) == kept  # (2, 1)
    assert alpha_at(v1, 47, 39) == kept  # (3, 3)
    assert alpha_at(v1, 25, 9) == dropped  # (0, 1)
    assert alpha_at(v1, 17, 39) == dropped  # (3, 0)
    assert alpha_at(v1, 10, 20) == outside and alpha_at(v1, 50, 20) == outside
    assert alpha_at(v1, 20, 45) == outside
    # view 2, flipped: patch (r, c) covers x 36-12c .. 48-12c, y 16+12r .. 28+12r
    assert alpha_at(v2, 47, 17) == kept  # (0, 0) sits at the box's right edge
    assert alpha_at(v2, 1, 63) == kept  # (3, 3) at the box's bottom-left
    assert alpha_at(v2, 30, 41) == kept  # (2, 1): x 24..36, y 40..52
    assert alpha_at(v2, 1, 17) == fused  # (0, 3): fused into the synthetic token
    assert alpha_at(v2, 40, 41) == fused  # (2, 0)
    assert alpha_at(v2, 50, 30) == outside and alpha_at(v2, 20, 10) == outside
    # the whole raster, patch for patch: kept pixels are exactly the kept patches' rectangles
    raster = to_original(kept_from_ids(rec.ids, 16), BOXES, FLIPPED, (H, W), fill=False)
    expected = torch.zeros(2, H, W, dtype=torch.bool)
    for r, c in ((0, 0), (2, 1), (3, 3)):
        expected[0, 8 + 8 * r : 16 + 8 * r, 16 + 8 * c : 24 + 8 * c] = True
        expected[1, 16 + 12 * r : 28 + 12 * r, 36 - 12 * c : 48 - 12 * c] = True
    expected[0, 8:16, 32:40] = True  # view 1's patch 2
    assert torch.equal(raster, expected)


def test_overlay_on_a_synthetic_image_content():
    """Colour the image by quadrant; the kept patches of view 1 show the colours they should."""
    image = torch.zeros(3, H, W)
    image[0, :, W // 2 :] = 1.0  # right half red
    image[1, H // 2 :, :] = 1.0  # bottom half green
    rec = record()
    keep = to_original(kept_from_ids(rec.ids, 16), BOXES, FLIPPED, (H, W), fill=False)
    # view 1 keeps (0, 0) x 16..24 y 8..16 and (2, 1) x 24..32 y 24..32: top-left, black;
    # (0, 2) x 32..40 y 8..16: top-right, red; (3, 3) x 40..48 y 32..40: bottom-right, yellow.
    # No kept pixel is green only (bottom-left), and each kept colour covers a whole patch.
    colour = image[0] + 2 * image[1]  # 0 black, 1 red, 2 green, 3 yellow
    counts = torch.bincount(colour[keep[0]].long(), minlength=4).tolist()
    assert counts == [2 * 64, 64, 0, 64]
    # view 2 (flipped) patch (0, 0) lies at x 36..48, y 16..28: red, top
    assert image[0, 16:28, 36:48].eq(1).all() and keep[1, 16:28, 36:48].all()


def test_view_overlay_is_on_the_view_grid():
    rec = record()
    rgba = point_rgba(rec.ids, rec.source, GRID)
    assert rgba.shape == (2, 4, 4, 4)
    assert rgba[0, 0, 0, 3] == 0 and rgba[0, 0, 1, 3] > 0.5 and rgba[1, 0, 3, 0] > 0.3  # fused: orange
