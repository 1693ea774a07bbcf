"""Distillation losses (``simprune.losses.kd``) against float64 Python loops written here.

Distances per token: ``1 − p·t / (|p| |t|)``, ``mean_d (p_d − t_d)²`` and
``mean_d smooth_l1(p_d − t_d)`` with ``smooth_l1(u) = u² / (2β)`` for ``|u| < β`` else ``|u| − β/2``.
Token targets: each student patch token with an original id is compared with the mean of the
teacher tokens at the original positions it holds (``source``); a token without an id (EViT's
fused token) is left out. The states come from the real reducers (EViT, ToMe) through the
one-branch driver.
"""

from __future__ import annotations

import math

import pytest
import torch

from simprune.drive import forward_reduced
from simprune.losses.kd import (
    align_to_student,
    cls_distill_per_sample,
    distance,
    kd_loss,
    kd_per_sample,
    standardize,
    token_distill_per_sample,
)
from simprune.models import create_model
from simprune.reducers import create_reducer


def ref_distance(p: list[float], t: list[float], kind: str, beta: float = 1.0) -> float:
    if kind == "cos":
        dot = sum(a * b for a, b in zip(p, t))
        norm = math.sqrt(sum(a * a for a in p)) * math.sqrt(sum(b * b for b in t))
        return 1.0 - dot / max(norm, 1e-8)
    if kind == "mse":
        return sum((a - b) ** 2 for a, b in zip(p, t)) / len(p)
    total = 0.0
    for a, b in zip(p, t):
        u = abs(a - b)
        total += u * u / (2 * beta) if u < beta else u - beta / 2
    return total / len(p)


def ref_targets(teacher: torch.Tensor, ids: torch.Tensor, source: torch.Tensor):
    """Per image and student token: ``None`` (left out) or the mean teacher vector of the
    original positions it holds, and how many it holds."""
    out = []
    for b in range(ids.shape[0]):
        row = []
        for i in range(ids.shape[1]):
            held = [j for j in range(source.shape[1]) if int(source[b, j]) == i]
            if int(ids[b, i]) < 0 or not held:
                row.append((None, len(held)))
                continue
            vec = [sum(float(teacher[b, j, d]) for j in held) / len(held) for d in range(teacher.shape[2])]
            row.append((vec, len(held)))
        out.append(row)
    return out


def ref_loss(pred_cls, teacher_cls, pred_tok, teacher_tok, ids, source, kind, w=1.0, beta=1.0):
    """Per-sample ``cls + w · mean over valid tokens`` from the loops above."""
    targets = ref_targets(teacher_tok, ids, source)
    per = []
    for b in range(pred_cls.shape[0]):
        cls = ref_distance(pred_cls[b].tolist(), teacher_cls[b].tolist(), kind, beta)
        toks = [ref_distance(pred_tok[b, i].tolist(), vec, kind, beta)
                for i, (vec, _) in enumerate(targets[b]) if vec is not None]
        per.append(cls + w * (sum(toks) / len(toks) if toks else 0.0))
    return per


def _state(method: str, keep: float, seed: int = 0):
    """The final state of a tiny ViT/4 (8x8 grid) reduced by ``method`` at blocks 4, 7, 10."""
    torch.manual_seed(seed)
    model = create_model("vit_nano_patch4_32").eval()
    with torch.no_grad():
        return forward_reduced(model, torch.randn(3, 3, 32, 32), create_reducer(method), keep).state


@pytest.mark.parametrize("kind", ["cos", "mse", "smooth_l1"])
def test_distances_match_the_formulas(kind):
    g = torch.Generator().manual_seed(1)
    p, t = torch.randn(4, 5, 7, generator=g, dtype=torch.float64), torch.randn(4, 5, 7, generator=g,
                                                                                  dtype=torch.float64)
    got = distance(p, t, kind, beta=0.5)
    assert got.shape == (4, 5) and got.dtype == torch.float64
    for a in range(4):
        for b in range(5):
            assert float(got[a, b]) == pytest.approx(ref_distance(p[a, b].tolist(), t[a, b].tolist(), kind,
                                                                  0.5), abs=1e-12)
    assert float(distance(t, t, kind).abs().max()) < 1e-12  # zero at the target


def test_half_precision_is_computed_in_float32():
    p = torch.randn(2, 8).bfloat16()
    assert distance(p, p.float(), "mse").dtype == torch.float32


def test_retained_tokens_target_the_teacher_token_at_their_original_id():
    state = _state("evit", 0.5)
    n0 = state.source.shape[1]
    # distinguishable teacher tokens: token j of image b is (b, j, j², 1)
    teacher = torch.stack([torch.tensor([[b, j, j * j, 1.0] for j in range(n0)], dtype=torch.float64)
                           for b in range(state.ids.shape[0])])
    targets, valid, counts = align_to_student(teacher, state.ids, state.source)
    real = state.ids >= 0
    assert torch.equal(valid, real)  # EViT: every real token holds exactly its own patch
    assert torch.equal(counts[real], torch.ones_like(counts[real]))
    for b in range(state.ids.shape[0]):
        for i, d in enumerate(state.ids[b].tolist()):
            if d >= 0:
                assert targets[b, i].tolist() == [b, d, d * d, 1.0]


def test_the_fused_token_is_left_out():
    state = _state("evit", 0.5)
    fused = state.ids < 0
    assert fused.any(dim=1).all()  # every image has EViT's fused token at the end
    g = torch.Generator().manual_seed(2)
    teacher = torch.randn(3, 64, 6, generator=g, dtype=torch.float64)
    pred = torch.randn(3, state.ids.shape[1], 6, generator=g, dtype=torch.float64)
    targets, valid, counts = align_to_student(teacher, state.ids, state.source)
    assert not valid[fused].any() and (counts[fused] > 0).all()  # it holds patches, yet is left out
    before = token_distill_per_sample(pred, targets, valid)
    moved = pred.clone()
    moved[fused] = 100.0  # whatever the fused token predicts
    assert torch.equal(token_distill_per_sample(moved, targets, valid), before)


def test_merged_targets_are_the_size_weighted_mean_of_their_sources():
    state = _state("tome", 0.5)
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(3, 64, 5, generator=g, dtype=torch.float64)
    targets, valid, counts = align_to_student(teacher, state.ids, state.source)
    assert valid.all()  # ToMe never makes a token without an original id
    sizes = state.size[:, state.num_prefix:]
    assert torch.equal(counts, sizes.to(counts.dtype))  # the originals held are ToMe's sizes
    assert (sizes > 1).any()  # something was merged
    ref = ref_targets(teacher, state.ids, state.source)
    for b in range(3):
        for i, (vec, n) in enumerate(ref[b]):
            assert n == int(sizes[b, i])
            assert targets[b, i].tolist() == pytest.approx(vec, abs=1e-12)


def test_size_weighted_mean_of_merged_groups_equals_the_mean_of_their_originals():
    """A token built by merging a size-2 token (patches 3, 4) with a size-1 one (patch 5) is
    compared with (2·mean(t3, t4) + t5) / 3, which is the mean of t3, t4, t5."""
    teacher = torch.arange(6 * 2, dtype=torch.float64).view(1, 6, 2) ** 2
    ids = torch.tensor([[0, 1, 4]])
    source = torch.tensor([[0, 1, 0, 2, 2, 2]])
    targets, valid, counts = align_to_student(teacher, ids, source)
    t = teacher[0]
    assert torch.allclose(targets[0, 2], (2 * (t[3] + t[4]) / 2 + t[5]) / 3)
    assert torch.allclose(targets[0, 0], (t[0] + t[2]) / 2)
    assert counts.tolist() == [[2.0, 1.0, 3.0]] and valid.all()


@pytest.mark.parametrize("method,kind", [("evit", "cos"), ("tome", "mse"), ("random", "smooth_l1"),
                                         ("evit", "smooth_l1")])
def test_the_loss_equals_the_re_derivation(method, kind):
    state = _state(method, 0.7)
    b, n = state.ids.shape
    g = torch.Generator().manual_seed(4)
    t_cls, p_cls = (torch.randn(b, 6, generator=g, dtype=torch.float64) for _ in range(2))
    t_tok = torch.randn(b, 64, 6, generator=g, dtype=torch.float64)
    p_tok = torch.randn(b, n, 6, generator=g, dtype=torch.float64)
    got = kd_per_sample(p_cls, t_cls, p_tok, t_tok, state.ids, state.source, kind, token_weight=0.5,
                        beta=0.7)
    want = ref_loss(p_cls, t_cls, p_tok, t_tok, state.ids, state.source, kind, 0.5, 0.7)
    assert got["total"].tolist() == pytest.approx(want, abs=1e-12)
    assert got["valid"].tolist() == [int((state.ids[i] >= 0).sum()) for i in range(b)]
    assert float(kd_loss(p_cls, t_cls, p_tok, t_tok, state.ids, state.source, kind, 0.5, 0.7)) == \
        pytest.approx(sum(want) / b, abs=1e-12)
    cls_only = kd_per_sample(p_cls, t_cls, kind=kind, beta=0.7)
    assert torch.equal(cls_only["total"], cls_distill_per_sample(p_cls, t_cls, kind, 0.7))
    assert "tokens" not in cls_only


def test_an_image_without_a_valid_token_adds_nothing():
    targets, valid, _ = align_to_student(torch.ones(1, 4, 3), torch.tensor([[-1, -1]]),
                                         torch.tensor([[1, 1, -1, -1]]))
    assert not valid.any()
    assert token_distill_per_sample(torch.randn(1, 2, 3), targets, valid).tolist() == [0.0]


def test_errors_name_the_shapes_and_the_choices():
    with pytest.raises(ValueError, match="one of cos, mse, smooth_l1"):
        distance(torch.ones(2), torch.ones(2), "l2")
    with pytest.raises(ValueError, match=r"\(2, 4\) and target \(2, 8\)"):
        distance(torch.ones(2, 4), torch.ones(2, 8))
    with pytest.raises(ValueError, match="original patch grid"):
        align_to_student(torch.ones(1, 16, 3), torch.zeros(1, 4, dtype=torch.long),
                         torch.zeros(1, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="beta"):
        distance(torch.ones(2), torch.zeros(2), "smooth_l1", beta=0.0)


def test_standardize_per_channel_over_the_given_dimensions():
    g = torch.Generator().manual_seed(5)
    x = 3 + 2 * torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    got = standardize(x, (0, 1), eps=0.0)
    for d in range(5):
        vals = [float(x[a, b, d]) for a in range(3) for b in range(4)]
        mu = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
        for a in range(3):
            for b in range(4):
                assert float(got[a, b, d]) == pytest.approx((float(x[a, b, d]) - mu) / sd, abs=1e-12)
    cls = standardize(x[:, 0], (0,))
    assert cls.mean(0).abs().max() < 1e-12 and torch.allclose(cls.std(0, unbiased=False),
                                                              torch.ones(5, dtype=torch.float64))
