"""Cosine schedules with a linear warm-up (learning rate, weight decay). The optimiser itself (AdamW
with weight decay on weights only) is built by :func:`simprune.run.build_optimizer` from the
framework's :meth:`~simprune.frameworks.Framework.param_groups`; the names stay importable here."""

from __future__ import annotations

import math

from simprune.frameworks.base import param_groups  # noqa: F401
from simprune.run import check_optim_settings, set_hparams  # noqa: F401


def cosine(start: float, end: float, t: float) -> float:
    """Cosine from ``start`` (t=0) to ``end`` (t=1)."""
    t = min(max(t, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def lr_at(t: float, base: float, min_lr: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` of training, then cosine to ``min_lr``."""
    if warmup > 0 and t < warmup:
        return base * t / warmup
    return cosine(base, min_lr, (t - warmup) / max(1e-12, 1.0 - warmup))
