"""The teacher EMA and its cosine momentum schedule, against closed forms.

EMA: ``t ← m·t + (1 − m)·s``; after n steps with a fixed student, ``t_n = s + mⁿ (t₀ − s)``.
Schedule (DINO): ``m(t) = end + (start − end)(1 + cos(π t)) / 2``, i.e. ``1 − (1 − m₀)(1 + cos πt)/2``
for ``end = 1``.
"""

from __future__ import annotations

import math

import pytest
import torch

from simprune.teachers.momentum import ema_update_, momentum_at


def _params(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (4,), (2, 2, 2), ()]
    return [torch.randn(s, generator=g, dtype=dtype) for s in shapes]


def test_one_update_matches_formula_elementwise():
    teacher, student = _params(0), _params(1)
    before = [t.clone() for t in teacher]
    ema_update_(teacher, student, 0.996)
    for t, t0, s in zip(teacher, before, student):
        for got, a, b in zip(t.flatten().tolist(), t0.flatten().tolist(), s.flatten().tolist()):
            assert got == pytest.approx(0.996 * a + 0.004 * b, rel=1e-12, abs=1e-15)


def test_n_updates_match_closed_form():
    teacher, student = _params(0), _params(1)
    t0 = [t.clone() for t in teacher]
    m, n = 0.9, 12
    for _ in range(n):
        ema_update_(teacher, student, m)
    for t, a, s in zip(teacher, t0, student):
        torch.testing.assert_close(t, s + m**n * (a - s), rtol=1e-12, atol=1e-14)


def test_varying_momentum_matches_loop():
    teacher, student = _params(2, torch.float32), _params(3, torch.float32)
    ref = [t.double().flatten().tolist() for t in teacher]
    momenta = [momentum_at(i / 5, 0.9, 1.0) for i in range(6)]
    for m in momenta:
        ema_update_(teacher, student, m)
        ref = [[m * a + (1 - m) * b for a, b in zip(r, s.double().flatten().tolist())]
               for r, s in zip(ref, student)]
    for t, r in zip(teacher, ref):
        assert t.flatten().tolist() == pytest.approx(r, rel=1e-5, abs=1e-6)


def test_momentum_one_leaves_teacher_unchanged_exactly():
    teacher, student = _params(0, torch.float32), _params(1, torch.float32)
    before = [t.clone() for t in teacher]
    ema_update_(teacher, student, 1.0)
    assert all(torch.equal(t, b) for t, b in zip(teacher, before))


def test_momentum_zero_copies_student_exactly():
    teacher, student = _params(0, torch.float32), _params(1, torch.float32)
    ema_update_(teacher, student, 0.0)
    assert all(torch.equal(t, s) for t, s in zip(teacher, student))


def test_student_untouched_and_no_graph_with_requires_grad():
    teacher = [torch.zeros(3)]
    student = [torch.ones(3, requires_grad=True)]
    ema_update_(teacher, student, 0.5)
    torch.testing.assert_close(teacher[0], torch.full((3,), 0.5))
    assert not teacher[0].requires_grad and teacher[0].grad_fn is None
    assert torch.equal(student[0].detach(), torch.ones(3)) and student[0].grad is None


def test_updates_parameters_in_place():
    t_mod, s_mod = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    for p in t_mod.parameters():
        p.requires_grad_(False)
    ids = [id(p) for p in t_mod.parameters()]
    ema_update_(list(t_mod.parameters()), list(s_mod.parameters()), 0.0)
    assert [id(p) for p in t_mod.parameters()] == ids
    assert all(torch.equal(a, b) for a, b in zip(t_mod.parameters(), s_mod.parameters()))


def test_empty_lists_are_a_no_op():
    ema_update_([], [], 0.5)


@pytest.mark.parametrize(("teacher", "student", "momentum", "match"), [
    ([torch.zeros(2)], [], 0.5, "pair one to one"),
    ([torch.zeros(2)], [torch.zeros(3)], 0.5, "pair 0"),
    ([torch.zeros(2)], [torch.zeros(2)], 1.1, r"\[0, 1\]"),
    ([torch.zeros(2)], [torch.zeros(2)], -0.1, r"\[0, 1\]"),
])
def test_bad_arguments_are_named(teacher, student, momentum, match):
    with pytest.raises(ValueError, match=match):
        ema_update_(teacher, student, momentum)


def test_momentum_schedule_endpoints_and_midpoint():
    assert momentum_at(0.0, 0.996, 1.0) == pytest.approx(0.996, abs=1e-15)
    assert momentum_at(1.0, 0.996, 1.0) == pytest.approx(1.0, abs=1e-15)
    assert momentum_at(0.5, 0.996, 1.0) == pytest.approx(0.998, abs=1e-15)
    assert momentum_at(0.25, 0.9, 1.0) == pytest.approx(1 - 0.1 * (1 + math.cos(math.pi / 4)) / 2)


def test_momentum_schedule_clamps_progress():
    assert momentum_at(-0.5, 0.996, 1.0) == momentum_at(0.0, 0.996, 1.0)
    assert momentum_at(1.7, 0.996, 1.0) == momentum_at(1.0, 0.996, 1.0)


def test_momentum_schedule_is_monotone_and_can_decrease():
    up = [momentum_at(i / 50, 0.99, 1.0) for i in range(51)]
    assert all(a <= b for a, b in zip(up, up[1:]))
    down = [momentum_at(i / 50, 1.0, 0.5) for i in range(51)]
    assert all(a >= b for a, b in zip(down, down[1:]))
    assert momentum_at(0.5, 0.7, 0.7) == 0.7
