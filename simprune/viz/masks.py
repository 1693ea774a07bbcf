"""Where the tokens of a reduction point came from, as maps over the patch grid and the image.

Two steps, both pure tensor functions:

1. Grid maps, from a :class:`~simprune.drive.PointRecord`'s ``ids [B, K]`` and ``source [B, N0]``
   (``N0 = gh · gw`` original patches of the view, row-major):

   - :func:`kept_from_ids`: ``[B, gh, gw]`` bool, the patches that still own a token (what a
     pruning method kept; for ToMe the representative of each merged token).
   - :func:`alive_from_source`: ``[B, gh, gw]`` bool, patches whose content survives anywhere.
   - :func:`patch_status`: ``[B, gh, gw]`` int, one of ``DROPPED`` (content gone), ``KEPT`` (own
     token), ``MERGED`` (content averaged into a token another patch owns: ToMe) and ``FUSED``
     (content in a synthetic token, ``ids == -1``: EViT's fused token).
   - :func:`merge_groups`: ``[B, gh, gw]`` int, the token position holding each patch (``-1``
     dropped): patches with equal values are one merged (ToMe) or fused (EViT) token.

2. Back onto the original image: :func:`patch_boxes` gives the rectangle of the original image
   that each patch of a view covers, and :func:`to_original` rasterises any grid map at the
   original resolution (optionally ``scale`` times finer, since CIFAR crop boxes are fractional).
   A view shows the crop box ``(x0, y0, x1, y1)`` (continuous pixel coordinates, pixel ``(i, j)``
   covers ``[j, j+1) × [i, i+1)``) resized to ``S × S`` and mirrored when ``flipped``, so view patch
   ``(r, c)`` covers ``x ∈ [x0 + c·w/gw, x0 + (c+1)·w/gw)`` (``x1 − (c+1)·w/gw .. x1 − c·w/gw``
   when flipped) and ``y ∈ [y0 + r·h/gh, y0 + (r+1)·h/gh)``, ``w = x1 − x0``, ``h = y1 − y0``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DROPPED, KEPT, MERGED, FUSED = 0, 1, 2, 3
STATUS_NAMES = {DROPPED: "dropped", KEPT: "kept", MERGED: "merged", FUSED: "fused"}


def grid_shape(num_patches: int, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(gh, gw)`` of a patch grid: ``grid`` checked against ``num_patches``, else a square."""
    if grid is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(f"{num_patches} patches are not a square grid; pass grid=(gh, gw)")
        return side, side
    gh, gw = int(grid[0]), int(grid[1])
    if gh * gw != num_patches:
        raise ValueError(f"grid {gh}x{gw} has {gh * gw} patches, but the record has {num_patches}")
    return gh, gw


def kept_from_ids(ids: Tensor, num_patches: int, grid: tuple[int, int] | None = None) -> Tensor:
    """Patches that own a token after the point.

    Args:
        ids: ``[B, K]`` original patch index of each token, ``-1`` for synthetic tokens.
        num_patches: ``N0``, the view's original patch count.
    Returns:
        ``[B, gh, gw]`` bool.
    """
    gh, gw = grid_shape(num_patches, grid)
    b = ids.shape[0]
    # scatter into an extra column that absorbs the synthetic (-1) tokens, then drop it
    hit = torch.zeros(b, num_patches + 1, dtype=torch.bool, device=ids.device)
    hit.scatter_(1, ids.long().masked_fill(ids < 0, num_patches), True)
    return hit[:, :num_patches].reshape(b, gh, gw)


def alive_from_source(source: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
    """``[B, gh, gw]`` bool: patches whose content still lives in some token (``source >= 0``).

    For pruning methods this is the keep mask; for EViT it adds the fused patches, for ToMe it is
    all patches.
    """
    b, n0 = source.shape
    gh, gw = grid_shape(n0, grid)
    return (source >= 0).reshape(b, gh, gw)


def patch_status(ids: Tensor, source: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
    """``DROPPED`` / ``KEPT`` / ``MERGED`` / ``FUSED`` of every original patch.

    Args:
        ids: ``[B, K]`` token ids after the point; source: ``[B, N0]`` token position holding
            each original patch, ``-1`` if dropped.
    Returns:
        ``[B, gh, gw]`` int64.
    """
    b, n0 = source.shape
    gh, gw = grid_shape(n0, grid)
    alive = source >= 0
    owner = ids.long().gather(1, source.long().clamp(min=0))  # id of the token holding the patch
    own = torch.arange(n0, device=source.device).expand(b, n0)
    status = torch.full((b, n0), DROPPED, dtype=torch.long, device=source.device)
    status = torch.where(alive & (owner == own), KEPT, status)
    status = torch.where(alive & (owner >= 0) & (owner != own), MERGED, status)
    status = torch.where(alive & (owner < 0), FUSED, status)
    return status.reshape(b, gh, gw)


def merge_groups(source: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
    """Token position holding each original patch (``-1`` dropped), as ``[B, gh, gw]`` int64.

    Patches with the same value share one token: a ToMe merge group or EViT's fused token.
    """
    b, n0 = source.shape
    gh, gw = grid_shape(n0, grid)
    return source.long().reshape(b, gh, gw)


def group_sizes(groups: Tensor, num_tokens: int) -> Tensor:
    """``[B, num_tokens]`` number of original patches in each token of ``groups: [B, gh, gw]``."""
    flat = groups.reshape(groups.shape[0], -1)
    sizes = torch.zeros(flat.shape[0], num_tokens + 1, dtype=torch.long, device=groups.device)
    sizes.scatter_add_(1, flat.masked_fill(flat < 0, num_tokens), torch.ones_like(flat))
    return sizes[:, :num_tokens]


def num_groups(groups: Tensor) -> Tensor:
    """``[B]`` number of distinct tokens that hold at least one original patch."""
    flat = groups.reshape(groups.shape[0], -1)
    n = int(flat.max().clamp(min=0)) + 1
    return (group_sizes(groups, n) > 0).sum(1)


def patch_boxes(boxes: Tensor, flipped: Tensor, grid: tuple[int, int]) -> Tensor:
    """Rectangle of the original image each view patch covers.

    Args:
        boxes: ``[B, 4]`` crop boxes ``(x0, y0, x1, y1)`` in original pixels; flipped: ``[B]`` bool.
        grid: ``(gh, gw)`` patch grid of the view.
    Returns:
        ``[B, gh, gw, 4]`` float ``(x0, y0, x1, y1)`` per patch, ``x0 < x1`` even when flipped.
    """
    gh, gw = grid
    boxes = boxes.double()
    x0, y0, x1, y1 = boxes.unbind(-1)
    fx = torch.arange(gw + 1, dtype=torch.float64, device=boxes.device) / gw  # [gw+1] edges
    fy = torch.arange(gh + 1, dtype=torch.float64, device=boxes.device) / gh
    w, h = (x1 - x0)[:, None], (y1 - y0)[:, None]
    left = torch.where(flipped[:, None], x1[:, None] - fx[1:] * w, x0[:, None] + fx[:-1] * w)  # [B, gw]
    right = torch.where(flipped[:, None], x1[:, None] - fx[:-1] * w, x0[:, None] + fx[1:] * w)
    top, bottom = y0[:, None] + fy[:-1] * h, y0[:, None] + fy[1:] * h  # [B, gh]
    b = boxes.shape[0]
    return torch.stack([
        left[:, None, :].expand(b, gh, gw), top[:, :, None].expand(b, gh, gw),
        right[:, None, :].expand(b, gh, gw), bottom[:, :, None].expand(b, gh, gw),
    ], dim=-1)


def pixel_to_patch(boxes: Tensor, flipped: Tensor, grid: tuple[int, int], size: tuple[int, int],
                   scale: int = 1) -> Tensor:
    """View patch under the centre of every (sub)pixel of the original image.

    Args:
        boxes: ``[B, 4]``; flipped: ``[B]``; grid: ``(gh, gw)``; size: ``(H, W)`` of the original.
        scale: raster ``scale`` times finer than the original pixels (centres at
            ``(i + 0.5) / scale``).
    Returns:
        ``[B, H·scale, W·scale]`` int64 row-major patch index ``r · gw + c``, ``-1`` outside the box.
        A centre on a patch edge belongs to the patch to its right (below) in view coordinates.
    """
    gh, gw = grid
    height, width = size
    boxes = boxes.double()
    x0, y0, x1, y1 = (t[:, None] for t in boxes.unbind(-1))
    xs = (torch.arange(width * scale, dtype=torch.float64, device=boxes.device) + 0.5) / scale
    ys = (torch.arange(height * scale, dtype=torch.float64, device=boxes.device) + 0.5) / scale
    u = (xs[None] - x0) / (x1 - x0)  # [B, W·s] position across the box, 0..1
    u = torch.where(flipped[:, None], 1.0 - u, u)  # position across the view
    v = (ys[None] - y0) / (y1 - y0)  # [B, H·s]
    col = (u * gw).floor().long()
    row = (v * gh).floor().long()
    inside = ((col >= 0) & (col < gw))[:, None, :] & ((row >= 0) & (row < gh))[:, :, None]
    index = row.clamp(0, gh - 1)[:, :, None] * gw + col.clamp(0, gw - 1)[:, None, :]
    return torch.where(inside, index, -1)


def to_original(values: Tensor, boxes: Tensor, flipped: Tensor, size: tuple[int, int],
                fill: float | int | bool = -1, scale: int = 1) -> Tensor:
    """Rasterise a per-patch map of a view onto the original image.

    Args:
        values: ``[B, gh, gw]`` any dtype (a keep mask, a status or group map).
        boxes: ``[B, 4]`` the view's crop boxes; flipped: ``[B]``; size: ``(H, W)`` original.
        fill: value outside the crop box; scale: raster resolution per original pixel.
    Returns:
        ``[B, H·scale, W·scale]`` of ``values.dtype``.
    """
    b, gh, gw = values.shape
    index = pixel_to_patch(boxes, flipped, (gh, gw), size, scale)
    flat = values.reshape(b, 1, gh * gw).expand(b, index.shape[1], gh * gw)
    picked = flat.gather(2, index.clamp(min=0))
    return torch.where(index >= 0, picked, torch.tensor(fill, dtype=values.dtype, device=values.device))
