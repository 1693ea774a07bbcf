"""The teacher's exponential moving average of the student, and its cosine momentum schedule (a
schedule and an in-place update, not a loss: it lives with the teachers that use it)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


@torch.no_grad()
def ema_update_(teacher_params: list[Tensor], student_params: list[Tensor], momentum: float) -> None:
    """In place ``t ← m·t + (1 − m)·s`` for each pair, as one fused ``lerp`` (``t + (1 − m)(s − t)``).

    ``momentum = 1`` leaves the teacher unchanged and ``0`` copies the student, both exactly.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    if len(teacher_params) != len(student_params):
        raise ValueError(f"{len(teacher_params)} teacher parameters but {len(student_params)} student "
                         f"parameters; they must pair one to one")
    for n, (t, s) in enumerate(zip(teacher_params, student_params)):
        if t.shape != s.shape:
            raise ValueError(f"parameter pair {n}: teacher shape {tuple(t.shape)} != student shape "
                             f"{tuple(s.shape)}")
    if not teacher_params:
        return
    torch._foreach_lerp_(list(teacher_params), [s.detach() for s in student_params], 1.0 - momentum)


def momentum_at(progress: float, start: float, end: float) -> float:
    """Cosine from ``start`` (progress 0) to ``end`` (progress 1); progress is clamped to [0, 1].

    With ``end = 1`` this is DINO's ``1 − (1 − m₀)(1 + cos(π t)) / 2``.
    """
    t = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
