"""SimPrune's teacher fill-up (METHOD item 5) ranks by (tier, CLS attention) exactly, then position.

The earlier fp32 priority ``2·tier + attention`` rounded attention gaps below ~2.4e-7 away (the
spacing of fp32 numbers in [4, 5]), so close tokens became ties that ``topk`` broke arbitrarily.
"""

from __future__ import annotations

import pytest
import torch
from reducer_testkit import synthetic_point

from simprune.reducers import create_reducer
from simprune.reducers.simprune import teacher_keep


def ref_teacher_keep(partner, kept_mask, attn, k):
    """One sample, from METHOD item 5 in plain Python: rank by (tier, attention), then position."""
    m = len(attn)
    kept = {p for p, kp in zip(partner, kept_mask) if kp}
    pruned = {p for p, kp in zip(partner, kept_mask) if not kp}
    tier = [2 if j in kept else 0 if j in pruned else 1 for j in range(m)]
    ranked = sorted(range(m), key=lambda j: (-tier[j], -attn[j], j))
    return sorted(ranked[:k])


def test_fill_up_ranks_attention_gaps_a_fp32_sum_rounds_away():
    # teacher tokens: 0 = kept pair's partner (tier 2), 1 = pruned pair's partner (tier 0),
    # 2..5 = nobody's partner (tier 1); one tier-1 slot is left for K = 2.
    partner = torch.tensor([[0, 1], [0, 1]])
    kept_mask = torch.tensor([[True, False], [True, False]])
    gaps = torch.tensor([0.0, 1e-8, 2e-8, 3e-8], dtype=torch.float64)
    base = 0.01
    attn = torch.full((2, 6), 0.002)
    attn[0, 2:] = (base + gaps).float()  # most attended tier-1 token last
    attn[1, 2:] = (base + gaps.flip(0)).float()  # ... and first
    assert len(set(attn[0, 2:].tolist())) == 4, "the attentions differ in fp32"
    assert len(set((2.0 * 1 + attn[0, 2:]).tolist())) == 1, "but 2·tier + attention does not"
    keep = teacher_keep(partner, kept_mask, attn, 2)
    assert keep.tolist() == [[0, 5], [0, 2]]


def test_fill_up_tier_beats_attention():
    partner = torch.tensor([[0, 1, 2]])
    kept_mask = torch.tensor([[True, False, False]])
    attn = torch.tensor([[0.0, 0.9, 0.9, 1e-6, 0.0]])  # tier 2, 0, 0, 1, 1
    assert teacher_keep(partner, kept_mask, attn, 3).tolist() == [[0, 3, 4]]
    assert teacher_keep(partner, kept_mask, attn, 4).tolist() == [[0, 1, 3, 4]]


def test_fill_up_equal_attention_keeps_lowest_positions():
    # kept partners 6 and 4; pruned partner 1; all attention equal
    partner = torch.tensor([[6, 1, 4]])
    kept_mask = torch.tensor([[True, False, True]])
    attn = torch.full((1, 8), 0.125)
    assert teacher_keep(partner, kept_mask, attn, 4).tolist() == [[0, 2, 4, 6]]
    assert teacher_keep(partner, kept_mask, attn, 7).tolist() == [[0, 2, 3, 4, 5, 6, 7]]
    assert teacher_keep(partner, kept_mask, attn, 8).tolist() == [list(range(8))]


@pytest.mark.parametrize("seed", range(6))
def test_fill_up_matches_reference_with_many_ties(seed):
    g = torch.Generator().manual_seed(seed)
    b, n, m = 5, 12, 16
    partner = torch.randint(0, m, (b, n), generator=g)
    k = 7
    kept_mask = torch.zeros(b, n, dtype=torch.bool)
    for r in range(b):  # K kept pairs per row, as the window gives
        kept_mask[r, torch.randperm(n, generator=g)[:k]] = True
    attn = torch.randint(0, 4, (b, m), generator=g).float() / 8  # four levels: ties everywhere
    got = teacher_keep(partner, kept_mask, attn, k)
    for r in range(b):
        want = ref_teacher_keep(partner[r].tolist(), kept_mask[r].tolist(), attn[r].tolist(), k)
        assert got[r].tolist() == want


def test_simprune_reducer_uses_the_exact_fill_up():
    # students 1 and 2 match teacher token 0 most closely (kept at p = 0), student 3 matches token 1
    # (pruned); teacher tokens 2 and 3 are nobody's partner and differ in attention by 1e-8
    t = torch.zeros(1, 1 + 4, 4)
    t[0, 1:] = torch.eye(4)
    s = torch.zeros(1, 1 + 3, 4)
    s[0, 1] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    s[0, 2] = torch.tensor([1.0, 0.0, 0.0, 0.1])
    s[0, 3] = torch.tensor([0.0, 1.0, 0.0, 0.5])
    attn = torch.zeros(1, 1 + 4)
    attn[0, 1:] = torch.tensor([0.01, 0.9, 0.01, 0.01 + 1e-8])
    s_out, t_out, _ = create_reducer("simprune").reduce_pair(
        synthetic_point(s), synthetic_point(t, cls_attn=attn), 2, 0.0)
    assert s_out.ids.tolist() == [[0, 1]]
    assert t_out.ids.tolist() == [[0, 3]]
