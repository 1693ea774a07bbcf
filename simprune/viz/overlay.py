"""RGBA overlays for the maps of :mod:`simprune.viz.masks` (numpy, ready for ``imshow``).

Kept patches are left clear; dropped patches are darkened; patches fused into EViT's extra token
are darkened with an orange tint; ToMe merge groups (tokens holding two or more patches) each get
their own colour, and single-patch tokens stay clear. Outside a view's crop box (maps rasterised
with ``fill=-1``) the image is washed out in white, so the crop box stands out.
"""

from __future__ import annotations

import colorsys

import numpy as np
from torch import Tensor

from simprune.viz.masks import DROPPED, FUSED, KEPT, MERGED, merge_groups, patch_status, to_original

OUTSIDE = -1
#: RGBA per status (and for outside the crop box)
STATUS_RGBA = {
    OUTSIDE: (1.0, 1.0, 1.0, 0.55),
    DROPPED: (0.0, 0.0, 0.0, 0.72),
    KEPT: (0.0, 0.0, 0.0, 0.0),
    MERGED: (0.0, 0.0, 0.0, 0.0),
    FUSED: (0.55, 0.25, 0.0, 0.72),
}


def _np(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def status_rgba(status: Tensor | np.ndarray) -> np.ndarray:
    """``[..., h, w]`` status map (``-1`` outside the box) -> ``[..., h, w, 4]`` float RGBA."""
    s = _np(status).astype(np.int64)
    out = np.zeros((*s.shape, 4), dtype=np.float32)
    for value, rgba in STATUS_RGBA.items():
        out[s == value] = rgba
    return out


def group_color(group: int) -> tuple[float, float, float]:
    """A colour per token position; neighbouring positions get far-apart hues (golden ratio)."""
    hue = (group * 0.6180339887) % 1.0
    sat = (0.95, 0.6, 0.8)[group % 3]
    val = (0.95, 0.75)[(group // 3) % 2]
    return colorsys.hsv_to_rgb(hue, sat, val)


def group_rgba(groups: Tensor | np.ndarray, status: Tensor | np.ndarray, alpha: float = 0.62) -> np.ndarray:
    """Colour every token that holds 2+ patches (a merge group or a fused token) on its own.

    Args:
        groups: ``[..., h, w]`` token position per patch (``-1`` dropped / outside).
        status: ``[..., h, w]`` the matching status map (``-1`` outside the box).
    Returns:
        ``[..., h, w, 4]``: dropped / outside as :func:`status_rgba`, groups coloured.
    """
    g, s = _np(groups).astype(np.int64), _np(status).astype(np.int64)
    out = status_rgba(s)
    lead = g.reshape(-1, *g.shape[-2:]) if g.ndim > 2 else g[None]
    outs = out.reshape(-1, *out.shape[-3:])
    for i, gi in enumerate(lead):
        values, counts = np.unique(gi[gi >= 0], return_counts=True)
        for value, count in zip(values, counts):
            if count > 1:
                outs[i][gi == value] = (*group_color(int(value)), alpha)
    return outs.reshape(out.shape)


def _maps(ids: Tensor, source: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    return patch_status(ids, source, grid), merge_groups(source, grid)


def point_rgba(ids: Tensor, source: Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Overlay of one point on the view's patch grid: ``[B, gh, gw, 4]``.

    Merge groups get colours when some patch was merged into another's token (ToMe); otherwise
    the status colours apply (dropped dark, fused orange).
    """
    status, groups = _maps(ids, source, grid)
    if bool((status == MERGED).any()):
        return group_rgba(groups, status)
    return status_rgba(status)


def original_rgba(ids: Tensor, source: Tensor, grid: tuple[int, int], boxes: Tensor, flipped: Tensor,
                  size: tuple[int, int], scale: int = 1) -> np.ndarray:
    """Overlay of one point mapped back onto the original image: ``[B, H·scale, W·scale, 4]``.

    Args:
        boxes: ``[B, 4]`` crop boxes of the views; flipped: ``[B]``; size: ``(H, W)`` original.
    """
    status, groups = _maps(ids, source, grid)
    status_o = to_original(status, boxes, flipped, size, fill=OUTSIDE, scale=scale)
    if bool((status == MERGED).any()):
        return group_rgba(to_original(groups, boxes, flipped, size, fill=-1, scale=scale), status_o)
    return status_rgba(status_o)
