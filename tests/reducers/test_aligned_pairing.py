"""SimPrune's A.4 pairing (DINOv2): a masked position pairs with itself, a kept masked pair is kept
in both branches, and with ``protect_masked`` no masked pair is ever pruned; through the driver too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reducer_testkit import images, point_from_state, tiny_model

from simprune.drive.masked_pair import apply_mask_token, masked_dual_forward, masked_rows
from simprune.reducers import create_reducer
from simprune.reducers.aligned import aligned_match, protected_count, reduce_aligned
from simprune.tokens import initial_state


def pair_points(seed=0, b=4, n=16, d=8):
    g = torch.Generator().manual_seed(seed)
    s = initial_state(torch.randn(b, 1 + n, d, generator=g))
    t = initial_state(torch.randn(b, 1 + n, d, generator=g))
    attn = torch.softmax(torch.randn(b, n, generator=g), -1)
    masked = torch.rand(b, n, generator=g) < 0.4
    masked[0] = False  # an unmasked crop
    return point_from_state(s), point_from_state(t, cls_attn=attn), masked


def test_masked_partner_is_itself_with_its_cosine():
    sp, tp, masked = pair_points()
    partner, sim = aligned_match(sp.state.patches, tp.state.patches, sp.state.ids, tp.state.ids, masked)
    ids = torch.arange(16).expand(4, 16)
    assert torch.equal(partner[masked], ids[masked])
    cos = F.cosine_similarity(sp.state.patches, tp.state.patches, dim=-1)
    torch.testing.assert_close(sim[masked], cos[masked])
    best = F.normalize(sp.state.patches, dim=-1) @ F.normalize(tp.state.patches, dim=-1).transpose(1, 2)
    torch.testing.assert_close(sim[~masked], best.max(-1).values[~masked])


@pytest.mark.parametrize("position", [0.0, 0.4, 1.0])
def test_kept_masked_pair_is_kept_in_both_branches(position):
    sp, tp, masked = pair_points(1)
    s_new, t_new, _ = reduce_aligned(create_reducer("simprune"), sp, tp, masked, 10, position)
    assert s_new.num_patches == t_new.num_patches == 10
    for b in range(4):
        kept_masked = {i for i in s_new.ids[b].tolist() if masked[b, i]}
        assert kept_masked <= set(t_new.ids[b].tolist())


def test_protect_masked_never_prunes_a_masked_pair():
    sp, tp, masked = pair_points(2)
    m_max = int(masked.sum(1).max())
    k = protected_count(16, 0.5, m_max)
    assert k == min(16, m_max + round(0.5 * (16 - m_max)))
    for position in (0.0, 0.5, 1.0):
        s_new, t_new, _ = reduce_aligned(create_reducer("simprune"), sp, tp, masked, k, position,
                                         protect=True)
        for b in range(4):
            want = set(torch.nonzero(masked[b]).flatten().tolist())
            assert want <= set(s_new.ids[b].tolist()) and want <= set(t_new.ids[b].tolist())


def test_mask_token_replaces_the_patch_embedding_before_the_position_embedding():
    model = tiny_model()
    x = images(2, 3)
    state = model.embed(x)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[0, :5] = True
    token = torch.randn(32)
    pos = model.interpolate_pos_embed(model.grid_size)[:, 1:]
    out = apply_mask_token(state, mask, token, pos)
    torch.testing.assert_close(out.patches[0, :5], (token + pos[0, :5]))
    assert torch.equal(out.patches[0, 5:], state.patches[0, 5:]) and torch.equal(out.x[1], state.x[1])


@pytest.mark.parametrize("protect", [False, True])
def test_driver_keeps_masked_pairs_together(protect):
    student, teacher = tiny_model(0), tiny_model(1)
    for m in (student, teacher):
        m.set_reduce_at((0, 2, 3))
    x = images(4, 5)
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(4, 64, generator=g) < 0.3
    mask[:2] = False
    token = torch.zeros(32)
    with torch.no_grad():
        out = masked_dual_forward(student, teacher, x, x, mask, token, create_reducer("simprune"), 0.7,
                                  0.0, protect_masked=protect, masked_max=int(mask.sum(1).max()))
    assert [p.block for p in out.points] == [2, 3]
    for p in out.points:
        s_masked = masked_rows(mask, p.student.ids)
        for b in range(4):
            kept = p.student.ids[b][s_masked[b]].tolist()
            assert set(kept) <= set(p.teacher.ids[b].tolist())
        if protect:
            assert torch.equal(s_masked.sum(1), mask.sum(1))
