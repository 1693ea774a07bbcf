"""Per-sample random masking at point 0 (MAE, PCAE) and the drivers that encode either side."""

from __future__ import annotations

import pytest
import torch
from reducer_testkit import images, tiny_model

from simprune.drive.masking import (
    encode_masked,
    encode_visible,
    mask_noise,
    num_visible,
    random_masking,
    split_by_noise,
    token_counts,
)
from simprune.tokens import initial_state


@pytest.mark.parametrize(("ratio", "k"), [(0.75, 16), (0.85, 9), (0.9, 6), (0.0, 63), (0.5, 32)])
def test_visible_count_is_maes_rule(ratio, k):
    assert num_visible(64, ratio) == k


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, True, "0.75"])
def test_bad_mask_ratio_is_refused(bad):
    with pytest.raises(ValueError, match="mask_ratio"):
        num_visible(64, bad)


@pytest.mark.parametrize("ratio", [0.75, 0.85, 0.9])
def test_visible_and_masked_are_disjoint_and_cover_the_grid(ratio):
    m = random_masking(torch.arange(8), step=3, seed=0, n=64, mask_ratio=ratio)
    assert m.visible.shape == (8, num_visible(64, ratio))
    assert m.masked.shape == (8, 64 - num_visible(64, ratio))
    for vis, msk in zip(m.visible.tolist(), m.masked.tolist()):
        assert vis == sorted(vis) and msk == sorted(msk)
        assert not set(vis) & set(msk)
        assert sorted(vis + msk) == list(range(64))


def test_masks_differ_between_samples_and_steps():
    a = random_masking(torch.arange(4), step=0, seed=0, n=64, mask_ratio=0.75)
    b = random_masking(torch.arange(4), step=1, seed=0, n=64, mask_ratio=0.75)
    c = random_masking(torch.arange(4), step=0, seed=1, n=64, mask_ratio=0.75)
    assert len({tuple(r) for r in a.visible.tolist()}) == 4
    assert not torch.equal(a.visible, b.visible) and not torch.equal(a.visible, c.visible)


def test_a_samples_mask_depends_only_on_seed_step_and_row():
    """What makes resumed and multi-process runs mask as one process does."""
    whole = random_masking(torch.tensor([5, 9, 2, 7]), step=11, seed=3, n=64, mask_ratio=0.75)
    half = random_masking(torch.tensor([2, 7]), step=11, seed=3, n=64, mask_ratio=0.75)
    assert torch.equal(whole.visible[2:], half.visible)
    torch.manual_seed(0)
    x = torch.rand(3)
    random_masking(torch.arange(4), step=0, seed=0, n=64, mask_ratio=0.75)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), x), "masking must not draw from the global RNG"


def test_split_is_maes_argsort_of_the_noise():
    noise = mask_noise(torch.arange(3), 0, 0, 10)
    m = split_by_noise(noise, 4)
    for b in range(3):
        order = sorted(range(10), key=lambda i: float(noise[b, i]))
        assert m.visible[b].tolist() == sorted(order[:4])
        assert m.masked[b].tolist() == sorted(order[4:])


def test_encoders_see_their_own_side_of_the_mask():
    model = tiny_model(seed=0, reduce_at=(0,))
    x = images(2, seed=1)
    m = random_masking(torch.arange(2), 0, 0, 64, 0.75)
    with torch.no_grad():
        vis, rec_v = encode_visible(model, x, m.visible)
        msk, rec_m = encode_masked(model, x, m.masked)
        # the same tokens by hand: CLS + visible, or the masked patches alone
        state = model.embed(x)
        ref_v = torch.cat([state.x[:, :1], state.patches.gather(
            1, m.visible.unsqueeze(-1).expand(-1, -1, state.x.shape[-1]))], 1)
        for blk in model.blocks:
            ref_v = blk(initial_state(ref_v)).x
        ref_v = model.norm(ref_v)
    assert vis.num_prefix == 1 and torch.equal(vis.ids, m.visible)
    assert msk.num_prefix == 0 and torch.equal(msk.ids, m.masked)
    assert vis.x.shape == (2, 17, 32) and msk.x.shape == (2, 48, 32)
    torch.testing.assert_close(vis.x, ref_v)
    assert [(r.block, r.tokens_in, r.tokens_out) for r in rec_v] == [(0, 64, 16)]
    assert token_counts(rec_m) == [48]


def test_masking_needs_point_zero():
    model = tiny_model(seed=0)  # reduces at blocks 2 and 3 only
    m = random_masking(torch.arange(2), 0, 0, 64, 0.75)
    with pytest.raises(ValueError, match="point 0"):
        encode_visible(model, images(2, 1), m.visible)
