"""The lock-step driver: which views pair (METHOD.md items 6-7), no teacher gradient, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from reducer_testkit import images, pair_spy, tiny_model

from simprune.drive import dual_forward, forward_reduced, lockstep_forward
from simprune.drive.lockstep import roll_point, roll_tokens
from simprune.reducers import SimPruneReducer, create_reducer
from simprune.tokens import initial_state

B = 2


@torch.no_grad()
def test_student_view1_pairs_with_teacher_view2_observably():
    """Teacher = student weights, teacher batch = student batch with the views swapped.

    Then the pairs the loss compares (student v1 / teacher v2, student v2 / teacher v1) see the
    same image: every student token finds its identical twin (cosine 1) and the teacher keeps
    exactly the student's tokens. Pairing rows without the roll would compare different images.
    """
    student = tiny_model(seed=0)
    teacher = copy.deepcopy(student)
    s_glob = images(2 * B, 1)
    t_glob = s_glob.roll(B, dims=0)  # teacher row i+B holds student row i's image
    out = lockstep_forward(student, teacher, s_glob, t_glob, SimPruneReducer(), 0.7, 0.37)
    for point in out.points:
        assert float(point.stats.sim_mean) > 0.9999
        for i in range(2 * B):
            j = (i + B) % (2 * B)
            assert point.teacher.ids[j].tolist() == point.student.ids[i].tolist()
    torch.testing.assert_close(out.teacher.state.x.roll(-B, dims=0), out.student.state.x)
    # control: the same images unswapped give the pair reducer different images to compare
    control = lockstep_forward(student, teacher, s_glob, s_glob, SimPruneReducer(), 0.7, 0.37)
    assert float(control.points[0].stats.sim_mean) < 0.99


@torch.no_grad()
def test_reduce_pair_receives_teacher_rolled_by_b():
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    s_glob, t_glob = images(2 * B, 2), images(2 * B, 3)
    spy = pair_spy(SimPruneReducer())
    out = lockstep_forward(student, teacher, s_glob, t_glob, spy, 0.7, 0.0)
    # first point by hand: both generators to block 2, teacher rolled, one reduce_pair
    s_pt = student.stages(s_glob, spy.student_needs).send(None)
    t_pt = teacher.stages(t_glob, spy.teacher_needs).send(None)
    assert torch.equal(spy.calls[0]["s_x"], s_pt.state.x)
    for i in range(2 * B):
        assert torch.equal(spy.calls[0]["t_x"][i], t_pt.state.x[(i + B) % (2 * B)])
    s_new, t_new, _ = SimPruneReducer().reduce_pair(s_pt, roll_point(t_pt, B), 45, 0.0)
    assert torch.equal(out.points[0].student.ids, s_new.ids)
    assert torch.equal(out.points[0].teacher.ids, t_new.ids.roll(-B, dims=0))


@torch.no_grad()
def test_local_view_j_pairs_with_teacher_global_view_j_mod_2():
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    num_local = 3
    spy = pair_spy(SimPruneReducer())
    out = lockstep_forward(student, teacher, images(2 * B, 4), images(2 * B, 5), spy, 0.7, 0.37,
                           student_local=images(num_local * B, 6, size=16))
    assert len(spy.local_calls) == len(spy.calls) == 2
    for call, local_call, point in zip(spy.calls, spy.local_calls, out.points):
        teacher_kept = roll_tokens(call["t_out"], -B).patches  # back in [t1; t2] order
        assert torch.equal(point.teacher.ids, roll_tokens(call["t_out"], -B).ids)
        anchors = local_call["anchors"]
        assert anchors.shape[0] == num_local * B
        for j in range(num_local):
            for b in range(B):
                assert torch.equal(anchors[j * B + b], teacher_kept[(j % 2) * B + b]), (j, b)
        # local views are pruned by the same window rule: round(rate * N_local)
        assert local_call["k"] == max(1, round(0.7 * local_call["n"]))
        assert torch.equal(point.local.ids, local_call["s_out"].ids)
    assert [p.local.tokens_in for p in out.points] == [16, 11]
    assert [p.local.tokens_out for p in out.points] == [11, 8]


def test_teacher_gets_no_gradient_student_does():
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    out = dual_forward(student, teacher, images(2 * B, 7), images(2 * B, 8), SimPruneReducer(), 0.7,
                       0.5, student_local=images(2 * B, 9, size=16))
    assert not out.teacher.state.x.requires_grad
    assert out.student.state.x.requires_grad and out.local.state.x.requires_grad
    loss = (out.student.cls * out.teacher.cls).sum() + out.local.cls.sum()
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.patch_embed.proj.weight.grad.abs().sum() > 0


@torch.no_grad()
def test_window_position_moves_from_similar_to_dissimilar():
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    s, t = images(2 * B, 10), images(2 * B, 11)
    easy = lockstep_forward(student, teacher, s, t, SimPruneReducer(), 0.5, 0.0)
    hard = lockstep_forward(student, teacher, s, t, SimPruneReducer(), 0.5, 1.0)
    e, h = easy.points[0].stats, hard.points[0].stats
    assert torch.isclose(e.sim_mean, h.sim_mean)
    assert e.sim_kept > e.sim_mean > h.sim_kept
    assert (e.start, h.start) == (0, 32)


@torch.no_grad()
def test_dense_dual_forward_equals_two_dense_forwards():
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    s, t, loc = images(2 * B, 12), images(2 * B, 13), images(2 * B, 14, size=16)
    out = dual_forward(student, teacher, s, t, None, student_local=loc)
    torch.testing.assert_close(out.student.state.x, student.forward_features(s).x)
    torch.testing.assert_close(out.teacher.state.x, teacher.forward_features(t).x)
    torch.testing.assert_close(out.local.state.x, student.forward_features(loc).x)
    assert [p.student.tokens_out for p in out.points] == [64, 64]
    assert [p.local.tokens_out for p in out.points] == [16, 16]


@torch.no_grad()
def test_one_branch_reducer_runs_each_branch_on_its_own():
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    s, t, loc = images(2 * B, 15), images(2 * B, 16), images(2 * B, 17, size=16)
    out = dual_forward(student, teacher, s, t, create_reducer("evit_nofuse"), 0.7, student_local=loc)
    alone = forward_reduced(teacher, t, create_reducer("evit_nofuse"), 0.7)
    torch.testing.assert_close(out.teacher.state.x, alone.state.x)
    assert [p.local.tokens_out for p in out.points] == [11, 8]


def test_roll_tokens_rolls_every_per_sample_tensor():
    state = initial_state(torch.arange(4.0)[:, None, None].expand(4, 3, 2).clone())
    state.size = torch.arange(12.0).reshape(4, 3)
    rolled = roll_tokens(state, 1)
    assert rolled.x[:, 0, 0].tolist() == [3.0, 0.0, 1.0, 2.0]
    assert rolled.size[:, 0].tolist() == [9.0, 0.0, 3.0, 6.0]
    assert rolled.num_prefix == 1


def test_lockstep_errors_name_the_problem():
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    s = images(2 * B, 18)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(1, 3\)"):
        lockstep_forward(student, tiny_model(seed=1, reduce_at=(1, 3)), s, s, SimPruneReducer(), 0.7, 0)
    with pytest.raises(ValueError, match=r"4 global rows.*teacher 6"):
        lockstep_forward(student, teacher, s, images(6, 1), SimPruneReducer(), 0.7, 0)
    with pytest.raises(ValueError, match=r"3 global rows are not 2 views"):
        lockstep_forward(student, teacher, images(3, 1), images(3, 2), SimPruneReducer(), 0.7, 0)


def test_student_and_teacher_of_different_widths():
    student = tiny_model(seed=0)
    wide = tiny_model(seed=1, embed_dim=48, num_heads=2)
    with pytest.raises(ValueError) as err:
        dual_forward(student, wide, images(2 * B, 1), images(2 * B, 2), SimPruneReducer(), 0.7, 0.0)
    msg = str(err.value)
    assert "32" in msg and "48" in msg and "same width" in msg


@pytest.mark.parametrize("rate", [0, 1.5, -0.1])
def test_bad_keep_rate_in_lockstep(rate):
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    s = images(2 * B, 3)
    with pytest.raises(ValueError) as err:
        lockstep_forward(student, teacher, s, s, SimPruneReducer(), rate, 0.0)
    assert repr(float(rate)) in str(err.value) and "(0, 1]" in str(err.value)


def test_keep_rate_list_of_wrong_length():
    student, teacher = tiny_model(seed=0), tiny_model(seed=1)
    s = images(2 * B, 3)
    with pytest.raises(ValueError, match=r"3 keep rates.*2 reduction points"):
        dual_forward(student, teacher, s, s, SimPruneReducer(), [0.7, 0.7, 0.7], 0.0)
