"""DINOv2's block masking on the patch grid (METHOD.md "DINOv2-style training"; ANCHORS.md 6.3).

A mask is built from rectangular blocks: each try draws an area ``~U(min_patches, budget)`` and a
log-uniform aspect ratio in ``aspect``; the block, rounded to whole patches (it must still have at
least ``min_patches`` patches, an aspect ratio in ``aspect`` and fit the grid, or the try fails),
lands at a uniform position and is accepted when it adds between 1 and ``budget`` new masked
patches (``budget``: what is left of the target, at most ``max_block`` of the grid). At most
``tries`` tries per block; blocks are added until the target is reached or a block finds no place,
so the realised count may fall short of the target but never exceeds it.

Which crops are masked, and how much, follows DINOv2's collate over the **global** batch of
``V·G`` crops (``V`` global views of ``G`` images, view-major): ``int(V·G·probability)`` of them
are masked, their ratios stratified over ``ratio_min_max`` (crop ``i`` draws uniformly from the
``i``-th of ``n`` equal bins), the list shuffled. That plan depends only on ``(seed, step, V·G)``;
each crop's blocks come from a generator seeded by ``(seed, step, dataset row, view)``. So a resumed
run and a run split over several processes (process ``r`` of ``W`` holds images
``[r·G/W, (r+1)·G/W)`` of the global batch, as :class:`~simprune.data.sampler.ResumableSampler`
splits it) mask every crop exactly as one uninterrupted process does.

Everything here runs on the host (Python's ``random``, seeded by strings, which is deterministic
across processes and platforms); the caller moves the mask to the device.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: (top, left, height, width) of one block, in patches
Block = tuple[int, int, int, int]


@dataclass(frozen=True)
class BlockMaskSpec:
    """How crops are masked.

    Attributes:
        grid: ``(H, W)`` patch grid of a global crop.
        ratio_min_max: the masked crops' ratios are stratified over this range (``[0, 1)``).
        probability: share of the global batch's crops that are masked (DINOv2: 0.5).
        min_patches: smallest block, in patches (4).
        aspect: block aspect ratios (height / width), drawn log-uniformly (0.3 to 1/0.3).
        tries: tries per block (10).
        max_block: largest block, as a share of the grid (DINOv2: 0.5).
    """

    grid: tuple[int, int]
    ratio_min_max: tuple[float, float] = (0.1, 0.5)
    probability: float = 0.5
    min_patches: int = 4
    aspect: tuple[float, float] = (0.3, 1 / 0.3)
    tries: int = 10
    max_block: float = 0.5

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def max_block_patches(self) -> int:
        return max(self.min_patches, int(self.max_block * self.num_patches))


def smallest_block(min_patches: int, aspect: tuple[float, float], grid: tuple[int, int]) -> Block | None:
    """The smallest ``h × w ≥ min_patches`` block with ``h / w`` in ``aspect`` that fits ``grid``
    (``None``: none fits)."""
    best = None
    for h in range(1, grid[0] + 1):
        for w in range(1, grid[1] + 1):
            if h * w >= min_patches and aspect[0] <= h / w <= aspect[1] and (
                    best is None or h * w < best[2] * best[3]):
                best = (0, 0, h, w)
    return best


def check_block_mask(spec: BlockMaskSpec, where: str = "") -> None:
    """Raise ``ValueError`` (one line, naming the values) for settings that cannot mask."""
    lo, hi = spec.ratio_min_max
    for name, r in (("lower", lo), ("upper", hi)):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
            raise ValueError(f"{where}mask ratio {name} bound {r!r} must be in [0, 1) (the share of "
                             f"a crop's patches masked); got mask_ratio_min_max {[lo, hi]}")
    if lo > hi:
        raise ValueError(f"{where}mask_ratio_min_max {[lo, hi]}: the lower bound exceeds the upper")
    if not 0.0 <= spec.probability <= 1.0:
        raise ValueError(f"{where}mask_probability {spec.probability!r} must be in [0, 1] (the share "
                         "of global crops that are masked)")
    if spec.min_patches < 1 or spec.tries < 1:
        raise ValueError(f"{where}mask_min_patches {spec.min_patches} and mask tries {spec.tries} "
                         "must be >= 1")
    a0, a1 = spec.aspect
    if not 0 < a0 <= a1:
        raise ValueError(f"{where}mask block aspect range {[a0, a1]} must satisfy 0 < min <= max")
    h, w = spec.grid
    if spec.probability > 0 and hi > 0:
        if smallest_block(spec.min_patches, spec.aspect, spec.grid) is None:
            raise ValueError(f"{where}a mask block of at least {spec.min_patches} patches with aspect "
                             f"ratio in [{a0:g}, {a1:g}] cannot fit the {h}x{w} patch grid; lower "
                             "mask_min_patches or use a larger grid")
        if int(hi * h * w) < spec.min_patches:
            raise ValueError(f"{where}the largest mask ({hi:g} of the {h}x{w} patch grid = "
                             f"{int(hi * h * w)} patches) cannot hold one block of mask_min_patches "
                             f"{spec.min_patches}; raise the upper mask ratio or lower mask_min_patches")


def draw_block_mask(spec: BlockMaskSpec, target: int, rng: random.Random) -> tuple[Tensor, list[Block]]:
    """One crop's mask with at most ``target`` patches: ``([H, W] bool, the accepted blocks)``."""
    h_grid, w_grid = spec.grid
    mask = torch.zeros(h_grid, w_grid, dtype=torch.bool)
    blocks: list[Block] = []
    log_a = (math.log(spec.aspect[0]), math.log(spec.aspect[1]))
    count = 0
    while count < target:
        budget = min(target - count, spec.max_block_patches)
        added = 0
        for _ in range(spec.tries):
            area = rng.uniform(spec.min_patches, max(budget, spec.min_patches))
            aspect = math.exp(rng.uniform(*log_a))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if (h * w < spec.min_patches or not (1 <= h <= h_grid and 1 <= w <= w_grid)
                    or not spec.aspect[0] <= h / w <= spec.aspect[1]):
                continue  # too small, outside the grid, or rounded out of the aspect range
            top, left = rng.randint(0, h_grid - h), rng.randint(0, w_grid - w)
            new = h * w - int(mask[top:top + h, left:left + w].sum())
            if 0 < new <= budget:
                mask[top:top + h, left:left + w] = True
                blocks.append((top, left, h, w))
                added = new
                break
        if added == 0:
            break
        count += added
    return mask, blocks


def mask_plan(seed: int, step: int, num_crops: int, spec: BlockMaskSpec) -> list[float | None]:
    """The masking ratio of each of the global batch's ``num_crops`` crops (``None``: unmasked):
    ``int(num_crops · probability)`` stratified ratios, shuffled; a function of
    ``(seed, step, num_crops)`` only."""
    rng = random.Random(f"dinov2-mask-plan:{seed}:{step}:{num_crops}")
    n_masked = int(num_crops * spec.probability)
    lo, hi = spec.ratio_min_max
    edges = [lo + (hi - lo) * i / max(1, n_masked) for i in range(n_masked + 1)]
    plan: list[float | None] = [rng.uniform(edges[i], edges[i + 1]) for i in range(n_masked)]
    plan += [None] * (num_crops - n_masked)
    rng.shuffle(plan)
    return plan


def target_count(ratio: float | None, num_patches: int) -> int:
    """Patches a crop of ``ratio`` aims to mask: ``int(N · ratio)`` (0 unmasked)."""
    return 0 if ratio is None else int(num_patches * ratio)


@dataclass
class BlockMasks:
    """This process's masks of one step.

    Attributes:
        mask: ``[V·B, N]`` bool (CPU), rows view-major as the global views are batched.
        targets: ``[V·B]`` each row's target count; blocks: each row's blocks.
        max_target: the largest target of the whole global batch (every process agrees on it).
    """

    mask: Tensor
    targets: list[int]
    blocks: list[list[Block]]
    max_target: int

    @property
    def counts(self) -> Tensor:
        """``[V·B]`` masked patches per row."""
        return self.mask.sum(1)


def batch_block_masks(index: Sequence[int] | Tensor, step: int, seed: int, spec: BlockMaskSpec,
                      num_views: int = 2, rank: int = 0, world: int = 1) -> BlockMasks:
    """The masks of this process's ``V·B`` global crops at ``step``.

    Args:
        index: ``[B]`` dataset rows of this process's images (its slice of the global batch).
        rank, world: this process and the number of processes (the global batch is ``world·B``).
    """
    rows = index.detach().cpu().tolist() if isinstance(index, Tensor) else list(index)
    b = len(rows)
    g = b * world
    plan = mask_plan(seed, step, num_views * g, spec)
    n = spec.num_patches
    masks, targets, blocks = [], [], []
    for v in range(num_views):
        for i, row in enumerate(rows):
            ratio = plan[v * g + rank * b + i]
            target = target_count(ratio, n)
            rng = random.Random(f"dinov2-mask:{seed}:{step}:{int(row)}:{v}")
            m, bl = draw_block_mask(spec, target, rng)
            masks.append(m.flatten())
            targets.append(target)
            blocks.append(bl)
    mask = torch.stack(masks) if masks else torch.zeros(0, n, dtype=torch.bool)
    max_target = max((target_count(r, n) for r in plan), default=0)
    return BlockMasks(mask, targets, blocks, max_target)


__all__ = ["Block", "BlockMaskSpec", "BlockMasks", "batch_block_masks", "check_block_mask",
           "draw_block_mask", "mask_plan", "smallest_block", "target_count"]
