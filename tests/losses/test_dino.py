"""DINO's loss pieces against re-derivations from the paper's definitions, in float64 Python.

DINO (Caron et al. 2021, METHOD.md): the teacher distribution is ``softmax((t − c) / τ_t)``; the
loss is the mean over every (teacher global view i, student view j ≠ i) pair of the batch mean of
``H(P_t, P_s) = −Σ_k P_t[k] log P_s[k]`` with ``P_s = softmax(s / τ_s)``; the centre is an EMA of
the batch mean of teacher outputs.
"""

from __future__ import annotations

import math

import pytest
import torch

from simprune.losses import (
    collapse_stats,
    dino_loss,
    dino_loss_per_sample,
    teacher_probs,
    teacher_temp_at,
    update_center,
    update_center_,
)


def ref_log_softmax(row: list[float], temp: float) -> list[float]:
    z = [v / temp for v in row]
    top = max(z)
    log_norm = top + math.log(sum(math.exp(v - top) for v in z))
    return [v - log_norm for v in z]


def ref_softmax(row: list[float], temp: float) -> list[float]:
    return [math.exp(v) for v in ref_log_softmax(row, temp)]


def ref_dino_per_sample(student: list, teacher: list, b: int, num_global: int, s_temp: float) -> list:
    """``[B]`` loss per image: a loop over images, then over (i, j ≠ i) view pairs, then classes."""
    num_views = len(student) // b
    out = []
    for n in range(b):
        total, pairs = 0.0, 0
        for i in range(num_global):
            p_t = teacher[i * b + n]
            for j in range(num_views):
                if j == i:
                    continue
                log_p_s = ref_log_softmax(student[j * b + n], s_temp)
                total += -sum(pt * ls for pt, ls in zip(p_t, log_p_s))
                pairs += 1
        out.append(total / pairs)
    return out


def _inputs(b=3, num_global=2, num_local=3, k=16, seed=0, t_temp=0.04):
    g = torch.Generator().manual_seed(seed)
    student = 2 * torch.randn((num_global + num_local) * b, k, generator=g)
    t_logits = torch.randn(num_global * b, k, generator=g)
    center = 0.3 * torch.randn(1, k, generator=g)
    return student, teacher_probs(t_logits, center, t_temp)


@pytest.mark.parametrize(("num_global", "num_local"), [(2, 0), (2, 3), (1, 2), (3, 1)])
def test_loss_matches_pair_loop(num_global, num_local):
    b = 3
    student, t_probs = _inputs(b, num_global, num_local)
    ref = ref_dino_per_sample(student.double().tolist(), t_probs.double().tolist(), b, num_global, 0.1)
    per_sample = dino_loss_per_sample(student, t_probs, num_global, 0.1)
    assert per_sample.shape == (b,)
    assert per_sample.tolist() == pytest.approx(ref, rel=1e-5)
    assert float(dino_loss(student, t_probs, num_global, 0.1)) == pytest.approx(sum(ref) / b, rel=1e-5)


def test_loss_float64_matches_loop_tightly():
    student, t_probs = _inputs()
    student, t_probs = student.double(), t_probs.double()
    ref = ref_dino_per_sample(student.tolist(), t_probs.tolist(), 3, 2, 0.1)
    assert dino_loss_per_sample(student, t_probs, 2, 0.1).tolist() == pytest.approx(ref, rel=1e-12)
    assert float(dino_loss(student, t_probs, 2, 0.1)) == pytest.approx(sum(ref) / 3, rel=1e-12)


def test_per_sample_mean_is_the_scalar_loss():
    student, t_probs = _inputs(b=5, seed=3)
    scalar = dino_loss(student, t_probs, 2, 0.1)
    per_sample = dino_loss_per_sample(student, t_probs, 2, 0.1)
    torch.testing.assert_close(per_sample.mean(), scalar, rtol=1e-6, atol=0)


def test_loss_gradient_reaches_student_only_through_other_views():
    """With 2 globals and no locals, student view 1 is compared with teacher view 0 and vice versa."""
    student, t_probs = _inputs(b=2, num_local=0)
    student.requires_grad_(True)
    dino_loss(student, t_probs, 2, 0.1).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    # Gradient of H(p, softmax(s/τ)) w.r.t. s is (softmax(s/τ) − p) / τ, divided by B and #pairs.
    s1 = torch.softmax(student.detach()[2:] / 0.1, dim=-1)
    expected = (s1 - t_probs[:2]) / 0.1 / 2 / 2
    torch.testing.assert_close(student.grad[2:], expected, rtol=1e-4, atol=1e-6)


def test_teacher_probs_is_centred_sharpened_softmax():
    g = torch.Generator().manual_seed(1)
    t_out, center = torch.randn(4, 7, generator=g), torch.randn(1, 7, generator=g)
    probs = teacher_probs(t_out.double(), center.double(), 0.04)
    for n in range(4):
        row = [t - c for t, c in zip(t_out[n].double().tolist(), center[0].double().tolist())]
        assert probs[n].tolist() == pytest.approx(ref_softmax(row, 0.04), rel=1e-9, abs=1e-300)


def test_centre_after_n_updates_is_the_closed_form_ema():
    """``c_n = mⁿ c₀ + (1 − m) Σ_{k=1..n} m^{n−k} b_k``."""
    g = torch.Generator().manual_seed(2)
    m, n, k = 0.9, 7, 5
    c0 = torch.randn(1, k, generator=g, dtype=torch.float64)
    batches = [torch.randn(6, k, generator=g, dtype=torch.float64) for _ in range(n)]
    center = c0.clone()
    for t_out in batches:
        returned = update_center_(center, t_out.mean(dim=0, keepdim=True), m)
        assert returned is center
    for col in range(k):
        expected = m**n * float(c0[0, col]) + (1 - m) * sum(
            m ** (n - i) * (sum(float(row[col]) for row in batches[i - 1]) / 6) for i in range(1, n + 1))
        assert float(center[0, col]) == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_update_center_leaves_its_input_alone():
    center, batch = torch.zeros(1, 3), torch.ones(1, 3)
    new = update_center(center, batch, 0.9)
    assert torch.equal(center, torch.zeros(1, 3))
    torch.testing.assert_close(new, torch.full((1, 3), 0.1))
    assert torch.equal(update_center(center, batch, 1.0), center)
    assert torch.equal(update_center(center, batch, 0.0), batch)


def test_update_center_rejects_momentum_outside_unit_interval():
    with pytest.raises(ValueError, match="center momentum"):
        update_center_(torch.zeros(1, 3), torch.ones(1, 3), 1.5)


def test_teacher_temperature_warmup():
    w, t, frac = 0.04, 0.07, 0.3
    assert teacher_temp_at(0.0, w, t, frac) == w
    assert teacher_temp_at(0.15, w, t, frac) == pytest.approx(0.055, rel=1e-12)
    assert teacher_temp_at(0.1, w, t, frac) == pytest.approx(0.04 + 0.03 / 3, rel=1e-12)
    assert teacher_temp_at(0.3, w, t, frac) == t  # end of warm-up
    assert teacher_temp_at(0.8, w, t, frac) == t  # beyond
    assert teacher_temp_at(1.0, w, t, frac) == t
    assert teacher_temp_at(1.5, w, t, frac) == t
    assert teacher_temp_at(0.0, w, t, 0.0) == t  # no warm-up
    assert teacher_temp_at(0.5, w, t, -1.0) == t


def test_teacher_temperature_warmup_is_monotone_and_continuous():
    values = [teacher_temp_at(i / 100, 0.04, 0.07, 0.3) for i in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert abs(teacher_temp_at(0.3 - 1e-9, 0.04, 0.07, 0.3) - 0.07) < 1e-9


def test_collapse_stats_uniform():
    k = 8
    probs = torch.full((4, k), 1.0 / k)
    stats = collapse_stats(probs, torch.zeros(1, k), 0.04)
    assert float(stats["teacher_entropy"]) == pytest.approx(math.log(k), rel=1e-6)
    assert float(stats["teacher_entropy_frac"]) == pytest.approx(1.0, rel=1e-6)
    assert float(stats["kl_to_center"]) == pytest.approx(0.0, abs=1e-6)  # zero centre: uniform too


def test_collapse_stats_one_hot():
    k = 8
    probs = torch.nn.functional.one_hot(torch.tensor([0, 3, 3, 5]), k).float()
    center = torch.zeros(1, k)
    stats = collapse_stats(probs, center, 0.04)
    assert float(stats["teacher_entropy"]) == pytest.approx(0.0, abs=1e-8)
    assert float(stats["teacher_entropy_frac"]) == pytest.approx(0.0, abs=1e-8)
    # KL(one-hot ‖ uniform) = log K
    assert float(stats["kl_to_center"]) == pytest.approx(math.log(k), rel=1e-6)


def test_collapse_stats_kl_matches_loop():
    g = torch.Generator().manual_seed(4)
    probs = torch.softmax(torch.randn(3, 6, generator=g, dtype=torch.float64), dim=-1)
    center = torch.randn(1, 6, generator=g, dtype=torch.float64)
    stats = collapse_stats(probs, center, 0.5)
    log_c = ref_log_softmax(center[0].tolist(), 0.5)
    kl = [sum(p * (math.log(p) - lc) for p, lc in zip(row, log_c)) for row in probs.tolist()]
    ent = [-sum(p * math.log(p) for p in row) for row in probs.tolist()]
    assert float(stats["kl_to_center"]) == pytest.approx(sum(kl) / 3, rel=1e-12)
    assert float(stats["teacher_entropy"]) == pytest.approx(sum(ent) / 3, rel=1e-12)
    assert float(stats["teacher_entropy_frac"]) == pytest.approx(sum(ent) / 3 / math.log(6), rel=1e-12)


@pytest.mark.parametrize(("s_rows", "t_rows", "num_global", "match"), [
    (8, 5, 2, "not a multiple"),
    (7, 4, 2, "V·B"),
    (2, 4, 2, "V·B"),  # fewer student views than global views
    (2, 2, 1, "one view"),
])
def test_bad_shapes_are_named(s_rows, t_rows, num_global, match):
    with pytest.raises(ValueError, match=match):
        dino_loss(torch.zeros(s_rows, 4), torch.zeros(t_rows, 4), num_global, 0.1)
    with pytest.raises(ValueError, match=match):
        dino_loss_per_sample(torch.zeros(s_rows, 4), torch.zeros(t_rows, 4), num_global, 0.1)


def test_mismatched_output_dims_are_named():
    with pytest.raises(ValueError, match="must match"):
        dino_loss(torch.zeros(4, 5), torch.zeros(4, 4), 2, 0.1)
