"""DINOv2's block masks: block sizes and shapes, ratio bounds, half the global batch masked, and the
same masks for the same seed, after a resume and when the batch is split over 2 processes."""

from __future__ import annotations

import pytest
import torch

from simprune.drive.block_mask import (
    BlockMaskSpec,
    batch_block_masks,
    check_block_mask,
    mask_plan,
    target_count,
)

SPEC = BlockMaskSpec((8, 8))


def masks(step=3, rows=tuple(range(16)), seed=0, **kw):
    return batch_block_masks(torch.tensor(rows), step, seed, SPEC, 2, **kw)


@pytest.mark.parametrize("step", range(6))
def test_blocks_sizes_and_ratio_bounds(step):
    bm = masks(step)
    n = SPEC.num_patches
    for row, (m, target, blocks) in enumerate(zip(bm.mask, bm.targets, bm.blocks)):
        count = int(m.sum())
        assert count <= target, "a mask never exceeds its target"
        if target == 0:
            assert count == 0 and not blocks
            continue
        assert int(0.1 * n) <= target <= int(0.5 * n)
        assert count >= 4 and blocks, f"row {row}: a masked crop holds at least one block"
        grid = torch.zeros(8, 8, dtype=torch.bool)
        for top, left, h, w in blocks:
            assert h * w >= 4, "blocks of at least 4 patches"
            assert 0.3 <= h / w <= 1 / 0.3 + 1e-9
            assert 0 <= top and top + h <= 8 and 0 <= left and left + w <= 8
            grid[top:top + h, left:left + w] = True
        assert torch.equal(grid.flatten(), m), "the mask is exactly the union of its blocks"


def test_half_the_global_batch_is_masked_with_stratified_ratios():
    plan = mask_plan(0, 5, 64, SPEC)
    ratios = sorted(r for r in plan if r is not None)
    assert len(ratios) == 32
    edges = [0.1 + 0.4 * i / 32 for i in range(33)]
    assert all(edges[i] <= r <= edges[i + 1] for i, r in enumerate(ratios))  # one per bin
    bm = masks(5, rows=tuple(range(32)))
    assert sum(t > 0 for t in bm.targets) == 32
    assert bm.max_target == max(target_count(r, 64) for r in plan)


def test_same_seed_same_masks_and_resume():
    a, b = masks(7, seed=1), masks(7, seed=1)  # a resumed run calls it again at the same step
    assert torch.equal(a.mask, b.mask) and a.blocks == b.blocks
    assert not torch.equal(a.mask, masks(8, seed=1).mask)
    assert not torch.equal(a.mask, masks(7, seed=2).mask)


def test_two_processes_mask_as_one():
    rows = tuple(range(100, 116))
    one = masks(4, rows=rows)
    halves = [masks(4, rows=rows[r * 8:(r + 1) * 8], rank=r, world=2) for r in range(2)]
    for v in range(2):  # rows are view-major: [view 0 of the local images; view 1 ...]
        joined = torch.cat([h.mask[v * 8:(v + 1) * 8] for h in halves])
        assert torch.equal(joined, one.mask[v * 16:(v + 1) * 16])
    assert all(h.max_target == one.max_target for h in halves)


@pytest.mark.parametrize("ratios, match", [((0.1, 1.0), r"upper bound 1\.0 must be in \[0, 1\)"),
                                            ((-0.1, 0.5), r"lower bound -0\.1 must be in \[0, 1\)"),
                                            ((0.5, 0.1), "exceeds the upper")])
def test_bad_ratios_name_the_values(ratios, match):
    with pytest.raises(ValueError, match=match):
        check_block_mask(BlockMaskSpec((8, 8), ratios))


def test_block_that_cannot_fit_the_grid_names_the_values():
    with pytest.raises(ValueError, match=r"at least 80 patches .* cannot fit the 8x8 patch grid"):
        check_block_mask(BlockMaskSpec((8, 8), min_patches=80))
    with pytest.raises(ValueError, match=r"largest mask \(0.05 of the 8x8 patch grid = 3 patches\)"):
        check_block_mask(BlockMaskSpec((8, 8), (0.01, 0.05)))
