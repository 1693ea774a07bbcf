"""SimPrune's matching option: the paper's argmax (default) and a greedy one-to-one assignment.

The one-to-one assignment is checked against a plain-loop re-derivation of its rounds: every
unassigned student proposes to its most similar unassigned teacher, every teacher with proposals
accepts its most similar proposer (lowest student index among equals), and after the last round
the i-th unassigned student takes the i-th unassigned teacher, both in index order.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from reducer_testkit import softmax_rows, synthetic_point

from simprune.reducers import create_reducer
from simprune.reducers.simprune import assign_one_to_one, match_tokens, window_keep


def ref_assign(sim: list[list[float]], rounds: int) -> list[int]:
    """One sample, in plain Python (see the module docstring)."""
    n, m = len(sim), len(sim[0])
    partner: list[int | None] = [None] * n
    free_t = list(range(m))
    for _ in range(rounds):
        proposals: dict[int, list[int]] = {}
        for i in range(n):
            if partner[i] is None:
                j = max(free_t, key=lambda jj: (sim[i][jj], -jj))
                proposals.setdefault(j, []).append(i)
        for j, students in proposals.items():
            winner = max(students, key=lambda i: (sim[i][j], -i))
            partner[winner] = j
            free_t.remove(j)
    left = [i for i in range(n) if partner[i] is None]
    for i, j in zip(left, sorted(free_t)):
        partner[i] = j
    return partner  # type: ignore[return-value]


def _clustered(b: int, n: int, m: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Students are noisy copies of a few teacher tokens: the argmax is heavily many-to-one."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(b, m, d, generator=g)
    src = torch.randint(0, max(2, m // 4), (b, n), generator=g)
    s = t.gather(1, src[..., None].expand(-1, -1, d)) + 0.3 * torch.randn(b, n, d, generator=g)
    return s, t


def _cos(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.normalize(s, dim=-1) @ F.normalize(t, dim=-1).transpose(1, 2)


@pytest.mark.parametrize("rounds", [1, 2, 3, 8, 40])
@pytest.mark.parametrize("n, m, seed", [(12, 12, 0), (16, 16, 1), (9, 14, 2), (24, 24, 3)])
def test_one_to_one_matches_loop(n, m, seed, rounds):
    s, t = _clustered(4, n, m, 8, seed)
    sim = _cos(s, t)
    got, left = assign_one_to_one(sim, rounds)
    for r in range(sim.shape[0]):
        assert got[r].tolist() == ref_assign(sim[r].tolist(), rounds)
        assert len(set(got[r].tolist())) == n
    if rounds >= n:
        assert not left.any()  # at least one student is assigned per round


def test_enough_rounds_need_no_fallback_and_keep_every_uncontested_argmax():
    s, t = _clustered(3, 16, 16, 8, seed=5)
    sim = _cos(s, t)
    full, left = assign_one_to_one(sim, 16)  # one match per round at least: 16 rounds suffice
    assert torch.equal(full, assign_one_to_one(sim, 100)[0]) and not left.any()
    argmax = sim.argmax(-1)
    for r in range(3):
        a = argmax[r].tolist()
        uncontested = [i for i in range(16) if a.count(a[i]) == 1]
        assert all(full[r, i] == a[i] for i in uncontested)


def test_ties_between_students_go_to_the_lowest_index():
    sim = torch.tensor([[[0.9, 0.1, 0.2], [0.9, 0.3, 0.1], [0.5, 0.4, 0.4]]])
    # round 1: students 0 and 1 both propose t0 at 0.9 (student 0 wins), student 2 too (0.5, loses);
    # round 2: student 1 proposes t1 (0.3), student 2 proposes t1 (0.4): student 2 wins;
    # round 3: student 1 takes t2.
    assert assign_one_to_one(sim, 3)[0].tolist() == [[0, 2, 1]]
    assert ref_assign(sim[0].tolist(), 3) == [0, 2, 1]
    # one round only: students 1 and 2 fall back to the free teachers t1, t2 in index order
    partner, left = assign_one_to_one(sim, 1)
    assert partner.tolist() == [[0, 1, 2]] and left.tolist() == [[False, True, True]]


def test_argmax_already_one_to_one_gives_identical_pairs():
    g = torch.Generator().manual_seed(0)
    b, n, d = 3, 20, 16
    s = torch.randn(b, 1 + n, d, generator=g)
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(b)])
    t = torch.randn(b, 1 + n, d, generator=g)
    noise = 0.05 * torch.randn(b, n, d, generator=g)
    t[:, 1:] = s[:, 1:].gather(1, perm[..., None].expand(-1, -1, d)) + noise
    p_arg, sim_arg, none = match_tokens(s[:, 1:], t[:, 1:])
    assert all(len(set(row.tolist())) == n for row in p_arg), "the construction is one-to-one"
    p_one, sim_one, left = match_tokens(s[:, 1:], t[:, 1:], "one_to_one", rounds=1)
    assert torch.equal(p_arg, p_one) and torch.equal(sim_arg, sim_one)
    assert none is None and not left.any()
    attn = softmax_rows(torch.randn(b, 1 + n, generator=g))
    student, teacher = synthetic_point(s), synthetic_point(t, cls_attn=attn)
    for p in (0.0, 0.4, 1.0):
        a = create_reducer("simprune").reduce_pair(student, teacher, 13, p)
        o = create_reducer("simprune", matching="one_to_one").reduce_pair(student, teacher, 13, p)
        assert torch.equal(a[0].ids, o[0].ids) and torch.equal(a[1].ids, o[1].ids)
        assert float(a[2].many_to_one) == float(o[2].many_to_one) == 0.0
        assert a[2].fallback is None and float(o[2].fallback) == 0.0


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_one_to_one_no_teacher_token_partners_two_kept_pairs(p):
    s, t = _clustered(4, 24, 24, 8, seed=7)
    s = torch.cat([torch.zeros(4, 1, 8), s], 1)
    t = torch.cat([torch.zeros(4, 1, 8), t], 1)
    attn = softmax_rows(torch.randn(4, 25, generator=torch.Generator().manual_seed(1)))
    student, teacher = synthetic_point(s), synthetic_point(t, cls_attn=attn)
    k = 17
    _, _, arg_stats = create_reducer("simprune").reduce_pair(student, teacher, k, p)
    assert float(arg_stats.dup_partners) > 0.2  # the argmax is many-to-one here
    s_out, t_out, stats = create_reducer("simprune", matching="one_to_one").reduce_pair(
        student, teacher, k, p)
    partner, sim, _ = match_tokens(s[:, 1:], t[:, 1:], "one_to_one")
    keep, _ = window_keep(sim, k, p)
    assert torch.equal(s_out.ids, keep)
    for r in range(4):
        kept_partners = partner[r, keep[r]].tolist()
        assert len(set(kept_partners)) == k  # no teacher token is the partner of two kept pairs
        assert sorted(kept_partners) == t_out.ids[r].tolist()  # no fill-up needed
    assert float(stats.dup_partners) == float(stats.many_to_one) == float(stats.fill_up) == 0.0
    _, _, left = match_tokens(s[:, 1:], t[:, 1:], "one_to_one")
    assert math.isclose(float(stats.fallback), float(left.float().mean()), abs_tol=1e-7)
    # fewer rounds leave more to the fallback, still one-to-one
    _, _, few = create_reducer("simprune", matching="one_to_one", rounds=1).reduce_pair(
        student, teacher, k, p)
    assert float(few.fallback) > float(stats.fallback) and float(few.dup_partners) == 0.0


def test_one_to_one_against_anchor_tokens():
    """Local views: fewer student tokens than anchors, each with its own anchor."""
    s, t = _clustered(2, 9, 16, 8, seed=4)
    s = torch.cat([torch.zeros(2, 1, 8), s], 1)
    reducer = create_reducer("simprune", matching="one_to_one")
    out, stats = reducer.reduce_against(synthetic_point(s), t, 5, 0.5)
    assert out.num_patches == 5 and stats.fill_up is None
    partner, _, _ = match_tokens(s[:, 1:], t, "one_to_one")
    assert all(len(set(row.tolist())) == 9 for row in partner)
    assert float(stats.many_to_one) == float(stats.dup_partners) == 0.0


def test_one_to_one_in_bf16_tokens():
    s, t = _clustered(2, 16, 16, 8, seed=3)
    s = torch.cat([torch.zeros(2, 1, 8), s], 1).bfloat16()
    t = torch.cat([torch.zeros(2, 1, 8), t], 1).bfloat16()
    attn = softmax_rows(torch.randn(2, 17, generator=torch.Generator().manual_seed(0)))
    s_out, t_out, stats = create_reducer("simprune", matching="one_to_one").reduce_pair(
        synthetic_point(s), synthetic_point(t, cls_attn=attn), 11, 0.3)
    assert s_out.x.dtype == torch.bfloat16 and s_out.num_patches == t_out.num_patches == 11
    assert torch.isfinite(stats.sim_kept) and float(stats.fill_up) == 0.0


def test_bad_matching_and_shapes_are_one_clear_error():
    with pytest.raises(ValueError, match=r"'hungarian'.*argmax, one_to_one"):
        create_reducer("simprune", matching="hungarian")
    with pytest.raises(ValueError, match=r"'nearest'.*argmax, one_to_one"):
        match_tokens(torch.randn(1, 4, 3), torch.randn(1, 4, 3), "nearest")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=r"rounds \(of the one-to-one matching\) must be an integer"):
            create_reducer("simprune", matching="one_to_one", rounds=bad)
    with pytest.raises(ValueError, match="applies to matching = 'one_to_one' only"):
        create_reducer("simprune", rounds=4)
    with pytest.raises(ValueError, match="5 students and 4 teachers"):
        assign_one_to_one(torch.randn(1, 5, 4))
    with pytest.raises(ValueError, match="rounds >= 1"):
        assign_one_to_one(torch.randn(1, 4, 4), 0)


def test_fill_up_share_counts_teacher_tokens_no_kept_pair_points_to():
    # students 1 and 2 both match teacher token 0 (kept at p = 0), student 3 matches token 1
    t = torch.zeros(1, 1 + 4, 4)
    t[0, 1:] = torch.eye(4)
    s = torch.zeros(1, 1 + 3, 4)
    s[0, 1] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    s[0, 2] = torch.tensor([1.0, 0.0, 0.0, 0.1])
    s[0, 3] = torch.tensor([0.0, 1.0, 0.0, 0.5])
    attn = torch.tensor([[0.0, 0.01, 0.9, 0.01, 0.02]])
    _, t_out, stats = create_reducer("simprune").reduce_pair(
        synthetic_point(s), synthetic_point(t, cls_attn=attn), 2, 0.0)
    assert t_out.ids.tolist() == [[0, 3]]  # t0 (both kept pairs' partner), t3 filled up
    assert math.isclose(float(stats.fill_up), 0.5) and math.isclose(float(stats.dup_partners), 0.5)
    # one-to-one: student 2 loses t0 and takes t3 (its best free teacher, cosine 0.0995), which
    # ranks it last; the window keeps students 1 and 3 with their partners t0, t1: nothing to fill
    s_out, t_out, stats = create_reducer("simprune", matching="one_to_one").reduce_pair(
        synthetic_point(s), synthetic_point(t, cls_attn=attn), 2, 0.0)
    assert s_out.ids.tolist() == [[0, 2]] and t_out.ids.tolist() == [[0, 1]]
    assert float(stats.fill_up) == 0.0


def test_index_keys_find_max_and_lowest_index_like_max():
    from simprune.reducers.simprune import index_keys, key_index

    g = torch.Generator().manual_seed(0)
    # few distinct values, both signs, zeros of both signs: ties everywhere
    sim = (torch.randint(-3, 4, (6, 9, 11), generator=g).float() / 4)
    sim[0, 0] = -0.0
    sim[0, 1, :3] = torch.tensor([-0.0, 0.0, -0.0])
    sim[1] = torch.randn(9, 11, generator=g)  # and distinct values
    sim[2] = -torch.rand(9, 11, generator=g)  # all negative
    keys = index_keys(sim)
    idx = key_index(keys.amax(-1), 11)
    for r in range(6):
        for i in range(9):
            row = [v + 0.0 for v in sim[r, i].tolist()]
            want = max(range(11), key=lambda j: (row[j], -j))
            assert idx[r, i] == want
    assert torch.equal(sim.gather(2, idx.unsqueeze(-1)).squeeze(-1), sim.amax(-1))
