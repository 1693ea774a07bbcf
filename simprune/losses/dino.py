"""DINO's loss pieces (Caron et al., 2021): the multi-view cross-entropy, the centred and sharpened
teacher distribution, the teacher-temperature warm-up, the centre EMA and collapse diagnostics.

Pure functions over tensors; collectives stay with the caller (the centre's batch mean must be
averaged over processes before :func:`update_center_`).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def _views(student_out: Tensor, teacher_probs: Tensor, num_global: int,
           student_temp: float) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Student log-probabilities and teacher probabilities split into per-view ``[B, K]`` chunks."""
    if num_global < 1 or teacher_probs.shape[0] % num_global:
        raise ValueError(f"teacher_probs has {teacher_probs.shape[0]} rows, not a multiple of "
                         f"num_global={num_global} (expected [G·B, K] with G ≥ 1)")
    b = teacher_probs.shape[0] // num_global
    if b == 0 or student_out.shape[0] % b or student_out.shape[0] // b < num_global:
        raise ValueError(f"student_out has {student_out.shape[0]} rows; expected V·B with B={b} and "
                         f"V ≥ num_global={num_global} views (global views first)")
    if student_out.shape[-1] != teacher_probs.shape[-1]:
        raise ValueError(f"student_out has {student_out.shape[-1]} outputs, teacher_probs "
                         f"{teacher_probs.shape[-1]}; they must match")
    num_views = student_out.shape[0] // b
    if num_views == 1:
        raise ValueError("one view only: the DINO loss needs a (teacher view, other student view) pair")
    s_views = F.log_softmax(student_out / student_temp, dim=-1).chunk(num_views)
    return s_views, teacher_probs.chunk(num_global)


def dino_loss(student_out: Tensor, teacher_probs: Tensor, num_global: int, student_temp: float) -> Tensor:
    """Mean cross-entropy over every (teacher view i, student view j ≠ i) pair.

    Args:
        student_out: ``[V·B, K]`` student logits, the ``num_global`` global views first.
        teacher_probs: ``[G·B, K]`` teacher probabilities (see :func:`teacher_probs`), G = num_global.
        student_temp: the student's softmax temperature.
    Returns:
        ``[]``: ``Σ_pairs mean_b H(t_i[b], s_j[b]) / #pairs``.
    """
    s_views, t_views = _views(student_out, teacher_probs, num_global, student_temp)
    total, terms = student_out.new_zeros(()), 0
    for i, t in enumerate(t_views):
        for j, s in enumerate(s_views):
            if i == j:
                continue
            total = total + (-t * s).sum(dim=-1).mean()
            terms += 1
    return total / terms


def dino_loss_per_sample(student_out: Tensor, teacher_probs: Tensor, num_global: int,
                         student_temp: float) -> Tensor:
    """:func:`dino_loss` per image: ``[B]``, each the mean over pairs of that image's views.

    Its mean equals :func:`dino_loss` up to rounding (the order of the sums differs).
    """
    s_views, t_views = _views(student_out, teacher_probs, num_global, student_temp)
    total, terms = student_out.new_zeros(t_views[0].shape[0]), 0
    for i, t in enumerate(t_views):
        for j, s in enumerate(s_views):
            if i == j:
                continue
            total = total + (-t * s).sum(dim=-1)
            terms += 1
    return total / terms


def teacher_probs(teacher_out: Tensor, center: Tensor, temp: float) -> Tensor:
    """Centred, sharpened teacher distribution ``softmax((t − c) / temp)``.

    Args:
        teacher_out: ``[N, K]`` teacher logits (cast to float32 first under autocast).
        center: ``[1, K]``.
    """
    return F.softmax((teacher_out - center) / temp, dim=-1)


def teacher_temp_at(progress: float, warmup_temp: float, temp: float, warmup_frac: float) -> float:
    """Linear warm-up from ``warmup_temp`` (progress 0) to ``temp`` (progress ``warmup_frac``),
    then constant; ``warmup_frac ≤ 0`` means no warm-up."""
    if warmup_frac <= 0 or progress >= warmup_frac:
        return temp
    f = progress / warmup_frac
    return warmup_temp + f * (temp - warmup_temp)


def update_center_(center: Tensor, batch_center: Tensor, momentum: float) -> Tensor:
    """In place ``c ← m·c + (1 − m)·batch_center``; returns ``center``.

    Args:
        center: ``[1, K]`` the running centre (a buffer).
        batch_center: ``[1, K]`` the mean of the teacher outputs over the batch, already averaged
            over processes by the caller.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"center momentum must be in [0, 1], got {momentum}")
    return center.mul_(momentum).add_(batch_center, alpha=1 - momentum)


def update_center(center: Tensor, batch_center: Tensor, momentum: float) -> Tensor:
    """:func:`update_center_` on a copy: the new centre, ``center`` left as it was."""
    return update_center_(center.clone(), batch_center, momentum)


def collapse_stats(t_probs: Tensor, center: Tensor, temp: float) -> dict[str, Tensor]:
    """Collapse diagnostics of the teacher distribution ``t_probs: [N, K]``.

    Returns:
        ``teacher_entropy``: mean entropy in nats (``log K`` = uniform collapse, 0 = one-hot
        collapse); ``teacher_entropy_frac``: the same over ``log K``; ``kl_to_center``: mean
        ``KL(t ‖ softmax(center / temp))``.
    """
    logp = t_probs.clamp_min(1e-12).log()
    entropy = -(t_probs * logp).sum(-1).mean()
    log_c = F.log_softmax(center / temp, dim=-1)
    kl = (t_probs * (logp - log_c)).sum(-1).mean()
    return {"teacher_entropy": entropy, "teacher_entropy_frac": entropy / math.log(t_probs.shape[-1]),
            "kl_to_center": kl}
