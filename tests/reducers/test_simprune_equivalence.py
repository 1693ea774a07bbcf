"""SimPrune's pair reduction against a loop re-derivation of METHOD.md items 1-5 (paper §4.1-4.2).

1. every student patch token i is matched to m(i) = argmax_j cos(s_i, t_j), sim_i its value;
2. pairs sorted by sim, most similar first; 3. keep ranks [w, w+K), w = round(p (N - K));
4. the student keeps those tokens in original order; 5. the teacher keeps every partner of a kept pair,
then fills up to K by CLS attention, first among tokens no pruned pair points to, then the rest.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from reducer_testkit import softmax_rows, synthetic_point

from simprune.reducers import SimPruneReducer, create_reducer


def _cos(u, v):
    return float(u @ v) / (math.sqrt(float(u @ u)) * math.sqrt(float(v @ v)))


def ref_simprune(s, t, t_attn, k, p):
    """One sample. s: [N, D], t: [M, D] patch tokens, t_attn: [M] teacher CLS attention.

    Returns (student keep, teacher keep, partners, sims, w, ranked pair list).
    """
    n, m = s.shape[0], t.shape[0]
    partner, sim = [], []
    for i in range(n):
        sims = [_cos(s[i], t[j]) for j in range(m)]
        j = max(range(m), key=lambda jj: (sims[jj], -jj))
        partner.append(j)
        sim.append(sims[j])
    ranked = sorted(range(n), key=lambda i: -sim[i])
    w = round(p * (n - k))
    kept_pairs = ranked[w : w + k]
    pruned_pairs = [i for i in range(n) if i not in kept_pairs]
    kept_partners = {partner[i] for i in kept_pairs}
    pruned_partners = {partner[i] for i in pruned_pairs}
    by_attn = sorted(range(m), key=lambda j: -float(t_attn[j]))
    free = [j for j in by_attn if j not in kept_partners and j not in pruned_partners]
    rest = [j for j in by_attn if j not in kept_partners and j in pruned_partners]
    teacher = sorted(kept_partners) + (free + rest)[: k - len(kept_partners)]
    return sorted(kept_pairs), sorted(teacher), partner, sim, w, ranked


def ref_stats(partner, kept, n):
    kept_partners = {partner[i] for i in kept}
    pruned = [i for i in range(n) if i not in kept]
    colliding = sum(1 for i in pruned if partner[i] in kept_partners)
    return colliding, len(pruned), (len(kept) - len(kept_partners)) / len(kept)


def _pair_points(b, n, d, seed, clustered=False):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(b, 1 + n, d, generator=g)
    if clustered:  # students are noisy copies of a few teacher tokens: many-to-one is common
        src = torch.randint(1, 1 + max(2, n // 4), (b, n), generator=g)
        s = torch.randn(b, 1 + n, d, generator=g)
        s[:, 1:] = t.gather(1, src[..., None].expand(-1, -1, d)) + 0.3 * torch.randn(b, n, d, generator=g)
    else:
        s = torch.randn(b, 1 + n, d, generator=g)
    attn = softmax_rows(2 * torch.randn(b, 1 + n, generator=g))
    return synthetic_point(s), synthetic_point(t, cls_attn=attn), s, t, attn


def _assert_matches_loop(student, teacher, s, t, attn, k, p):
    s_out, t_out, stats = SimPruneReducer().reduce_pair(student, teacher, k, p)
    b, n = s.shape[0], s.shape[1] - 1
    assert s_out.num_patches == t_out.num_patches == k
    total_coll = total_pruned = 0
    dups, fills = [], []
    for bi in range(b):
        s_keep, t_keep, partner, sim, w, _ = ref_simprune(s[bi, 1:], t[bi, 1:], attn[bi, 1:], k, p)
        # the fill-up share: teacher tokens kept that are no kept pair's partner
        fills.append(sum(1 for j in t_keep if j not in {partner[i] for i in s_keep}) / len(t_keep))
        assert s_out.ids[bi].tolist() == s_keep
        assert t_out.ids[bi].tolist() == t_keep
        assert torch.equal(s_out.patches[bi], s[bi, 1:][s_keep])
        assert torch.equal(t_out.patches[bi], t[bi, 1:][t_keep])
        assert torch.equal(s_out.x[bi, 0], s[bi, 0]) and torch.equal(t_out.x[bi, 0], t[bi, 0])
        assert {partner[i] for i in s_keep} <= set(t_keep)
        assert stats.start == w
        coll, pruned, dup = ref_stats(partner, s_keep, n)
        total_coll, total_pruned = total_coll + coll, total_pruned + pruned
        dups.append(dup)
    assert stats.position == p
    expected_m2o = total_coll / total_pruned if total_pruned else 0.0
    assert math.isclose(float(stats.many_to_one), expected_m2o, abs_tol=1e-6)
    assert math.isclose(float(stats.dup_partners), sum(dups) / len(dups), abs_tol=1e-6)
    assert math.isclose(float(stats.fill_up), sum(fills) / len(fills), abs_tol=1e-6)
    return stats


@pytest.mark.parametrize("p", [0.0, 0.37, 1.0])
@pytest.mark.parametrize("k", [1, 5, 11, 16])
def test_window_matches_loop(p, k):
    student, teacher, s, t, attn = _pair_points(3, 16, 8, seed=int(100 * p) + k)
    _assert_matches_loop(student, teacher, s, t, attn, k, p)


@pytest.mark.parametrize("p", [0.0, 0.37, 1.0])
def test_many_to_one_still_gives_k_each(p):
    student, teacher, s, t, attn = _pair_points(4, 24, 6, seed=3, clustered=True)
    stats = _assert_matches_loop(student, teacher, s, t, attn, 17, p)
    assert float(stats.dup_partners) > 0.2  # the construction does produce many-to-one
    if p == 0.37:
        assert float(stats.many_to_one) > 0


@pytest.mark.parametrize("p", [0.0, 0.37, 1.0])
def test_window_ranks_loop_sim_values(p):
    """The student keeps exactly ranks [w, w+K) of the similarity ranking."""
    student, teacher, s, t, attn = _pair_points(1, 20, 5, seed=9)
    k = 7
    s_out, _, stats = SimPruneReducer().reduce_pair(student, teacher, k, p)
    _, _, _, sim, w, ranked = ref_simprune(s[0, 1:], t[0, 1:], attn[0, 1:], k, p)
    assert w == round(p * 13)
    assert sorted(ranked[w : w + k]) == s_out.ids[0].tolist()
    kept_sims = sorted((sim[i] for i in s_out.ids[0].tolist()), reverse=True)
    all_sims = sorted(sim, reverse=True)
    assert kept_sims == all_sims[w : w + k]
    assert math.isclose(float(stats.sim_mean), sum(sim) / 20, abs_tol=1e-5)
    assert math.isclose(float(stats.sim_kept), sum(kept_sims) / k, abs_tol=1e-5)


def _onehot_case():
    """Six teacher tokens e_0..e_5; students chosen so the partners and ranks are known."""
    e = torch.eye(6)
    t = torch.cat([torch.zeros(1, 6), e])[None]  # CLS + 6 patches
    s_rows = [
        e[0],  # -> t0, sim 1.000
        e[0] + 0.1 * e[1],  # -> t0, sim 0.995 (many-to-one with the first)
        e[2] + 0.5 * e[3],  # -> t2, sim 0.894
        e[2] + 0.6 * e[4],  # -> t2, sim 0.857
        e[1] + 1.2 * e[5],  # -> t5, sim 0.768
        e[3] + 0.9 * e[5],  # -> t3, sim 0.743
    ]
    s = torch.cat([torch.zeros(1, 6), torch.stack(s_rows)])[None]
    return s, t


def test_teacher_fill_up_prefers_tokens_no_pruned_pair_points_to():
    s, t = _onehot_case()
    # CLS attention favours t3 and t5 (partners of pruned pairs) over t1 and t4
    attn = torch.tensor([[0.1, 0.05, 0.15, 0.05, 0.3, 0.1, 0.25]])  # CLS, t0..t5
    student, teacher = synthetic_point(s), synthetic_point(t, cls_attn=attn)
    s_out, t_out, stats = SimPruneReducer().reduce_pair(student, teacher, 3, 0.0)
    # kept pairs: ranks 0..2 = students 0, 1, 2 -> partners {0, 2}; one slot left.
    # pruned pairs 3, 4, 5 point to t2, t5, t3; t1 and t4 are free; t1 has more attention.
    assert s_out.ids.tolist() == [[0, 1, 2]]
    assert t_out.ids.tolist() == [[0, 1, 2]]
    assert math.isclose(float(stats.dup_partners), 1 / 3, abs_tol=1e-6)
    assert math.isclose(float(stats.many_to_one), 1 / 3, abs_tol=1e-6)  # student 3 -> t2, kept
    # favour t4 instead: it fills the slot, and t3/t5 still lose despite their attention
    attn = torch.tensor([[0.1, 0.05, 0.01, 0.05, 0.3, 0.19, 0.3]])
    _, t_out, _ = SimPruneReducer().reduce_pair(student, synthetic_point(t, cls_attn=attn), 3, 0.0)
    assert t_out.ids.tolist() == [[0, 2, 4]]


def test_prune_similar_end_of_window():
    s, t = _onehot_case()
    attn = torch.full((1, 7), 1 / 7)
    attn[0, 2] = 0.2  # t1 first among the free tokens
    s_out, t_out, stats = SimPruneReducer().reduce_pair(synthetic_point(s),
                                                        synthetic_point(t, cls_attn=attn), 3, 1.0)
    # p = 1: w = 3, keep the three least similar pairs: students 3, 4, 5 -> t2, t5, t3
    assert stats.start == 3
    assert s_out.ids.tolist() == [[3, 4, 5]]
    assert t_out.ids.tolist() == [[2, 3, 5]]
    assert float(stats.dup_partners) == 0.0
    assert math.isclose(float(stats.many_to_one), 1 / 3, abs_tol=1e-6)  # student 2 -> t2


@given(
    n=st.integers(2, 14),
    d=st.integers(2, 6),
    frac=st.floats(0.05, 1.0),
    p=st.sampled_from([0.0, 0.2, 0.37, 0.5, 1.0]),
    seed=st.integers(0, 10_000),
    clustered=st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_random_pairs_match_loop(n, d, frac, p, seed, clustered):
    k = max(1, round(frac * n))
    student, teacher, s, t, attn = _pair_points(2, n, d, seed, clustered)
    for bi in range(2):  # skip near-ties, where fp32 and the loop may order differently
        _, _, _, sim, _, ranked = ref_simprune(s[bi, 1:], t[bi, 1:], attn[bi, 1:], k, p)
        gaps = [sim[ranked[i]] - sim[ranked[i + 1]] for i in range(n - 1)]
        assume(all(g > 1e-5 for g in gaps))
        for i in range(n):
            top = sorted((_cos(s[bi, 1 + i], t[bi, 1 + j]) for j in range(n)), reverse=True)
            assume(top[0] - top[1] > 1e-5)
        a = sorted(attn[bi, 1:].tolist(), reverse=True)
        assume(all(x - y > 1e-7 for x, y in zip(a, a[1:])))
    _assert_matches_loop(student, teacher, s, t, attn, k, p)


def test_keys_metric_matches_on_head_averaged_keys():
    g = torch.Generator().manual_seed(4)
    b, n, d, heads, hd = 2, 10, 8, 2, 3
    s_x, t_x = torch.randn(b, 1 + n, d, generator=g), torch.randn(b, 1 + n, d, generator=g)
    s_k, t_k = torch.randn(b, heads, 1 + n, hd, generator=g), torch.randn(b, heads, 1 + n, hd, generator=g)
    attn = softmax_rows(torch.randn(b, 1 + n, generator=g))
    student = synthetic_point(s_x, k=s_k)
    teacher = synthetic_point(t_x, cls_attn=attn, k=t_k)
    red = create_reducer("simprune", metric="keys")
    assert red.student_needs == {"qk"} and red.teacher_needs == {"qk", "cls_attn"}
    s_out, t_out, _ = red.reduce_pair(student, teacher, 4, 0.37)
    for bi in range(b):
        s_keep, t_keep, *_ = ref_simprune(s_k[bi, :, 1:].mean(0), t_k[bi, :, 1:].mean(0),
                                          attn[bi, 1:], 4, 0.37)
        assert s_out.ids[bi].tolist() == s_keep and t_out.ids[bi].tolist() == t_keep
    with pytest.raises(RuntimeError, match="qk"):
        red.reduce_pair(synthetic_point(s_x), teacher, 4, 0.37)


def test_reduce_against_fixed_teacher_tokens():
    g = torch.Generator().manual_seed(8)
    s = torch.randn(2, 1 + 16, 5, generator=g)
    anchors = torch.randn(2, 7, 5, generator=g)  # fewer tokens than the student: a pruned teacher
    out, stats = SimPruneReducer().reduce_against(synthetic_point(s), anchors, 11, 0.37)
    assert out.num_patches == 11
    fake_attn = torch.zeros(7)
    for bi in range(2):
        s_keep, *_ = ref_simprune(s[bi, 1:], anchors[bi], fake_attn, 11, 0.37)
        assert out.ids[bi].tolist() == s_keep
    assert stats.start == round(0.37 * 5)


def test_different_widths_are_rejected():
    student = synthetic_point(torch.randn(2, 9, 8))
    teacher = synthetic_point(torch.randn(2, 9, 6), cls_attn=softmax_rows(torch.randn(2, 9)))
    with pytest.raises(ValueError) as err:
        SimPruneReducer().reduce_pair(student, teacher, 4, 0.0)
    msg = str(err.value)
    assert "8" in msg and "6" in msg and "same width" in msg
    with pytest.raises(ValueError, match=r"width 8.*6"):
        SimPruneReducer().reduce_against(student, torch.randn(2, 5, 6), 4, 0.0)


def test_different_batches_are_rejected():
    student = synthetic_point(torch.randn(2, 9, 8))
    teacher = synthetic_point(torch.randn(3, 9, 8), cls_attn=softmax_rows(torch.randn(3, 9)))
    with pytest.raises(ValueError, match=r"student batch 2 != teacher batch 3"):
        SimPruneReducer().reduce_pair(student, teacher, 4, 0.0)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_bad_window_position(p):
    student, teacher, *_ = _pair_points(1, 6, 3, seed=0)
    with pytest.raises(ValueError) as err:
        SimPruneReducer().reduce_pair(student, teacher, 3, p)
    assert repr(p) in str(err.value) and "[0, 1]" in str(err.value)
