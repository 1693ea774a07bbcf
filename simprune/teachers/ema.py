"""The EMA teacher: ``teacher ← m · teacher + (1 − m) · student`` after every step, with ``m`` on a
cosine from ``momentum`` to ``momentum_end`` over training."""

from __future__ import annotations

from torch import nn

from simprune.teachers.momentum import ema_update_, momentum_at


def copy_matching_(teacher: nn.Module, student: nn.Module) -> list[str]:
    """Copy the student's parameters and buffers into the teacher, name by name.

    Every teacher entry must exist in the student with the same shape (an error names the first
    that does not); student entries the teacher lacks (MoCo v3's predictor) are returned.
    """
    s = student.state_dict()
    t = teacher.state_dict()
    missing = [k for k in t if k not in s]
    if missing:
        raise ValueError(f"teacher entries {missing[:5]} have no counterpart in the student")
    bad = [(k, tuple(t[k].shape), tuple(s[k].shape)) for k in t if t[k].shape != s[k].shape]
    if bad:
        k, a, b = bad[0]
        raise ValueError(f"teacher {k} has shape {a}, student {b}")
    teacher.load_state_dict({k: s[k] for k in t}, strict=True)
    return sorted(set(s) - set(t))


class EMATeacher:
    """The update rule of an EMA teacher (the teacher module itself lives in the framework).

    Args:
        student, teacher: modules with the same parameter names (the teacher may lack some).
        momentum, momentum_end: the cosine schedule's ends, in ``[0, 1]``.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, momentum: float,
                 momentum_end: float) -> None:
        for name, m in (("momentum", momentum), ("momentum_end", momentum_end)):
            if not 0.0 <= m <= 1.0:
                raise ValueError(f"teacher {name} must be in [0, 1], got {m}")
        self.momentum, self.momentum_end = momentum, momentum_end
        s_names = dict(student.named_parameters())
        self.pairs = [(t, s_names[n]) for n, t in teacher.named_parameters() if n in s_names]
        for p in teacher.parameters():
            p.requires_grad_(False)

    def momentum_at(self, t: float) -> float:
        return momentum_at(t, self.momentum, self.momentum_end)

    def update(self, t: float) -> float:
        """One EMA step at progress ``t``; returns the momentum used."""
        m = self.momentum_at(t)
        ema_update_([tp for tp, _ in self.pairs], [sp.detach() for _, sp in self.pairs], m)
        return m
