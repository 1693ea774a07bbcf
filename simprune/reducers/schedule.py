"""Schedules driven by per-iteration training progress ``t ∈ [0, 1]``.

- :class:`KeepRateSchedule`: EViT's keep-rate warm-up — rate 1 until ``start``, then a cosine from
  1 down to the target, reached at ``end``, constant after (``ramp = "linear"``: a straight line
  instead, PCAE's fine-tuning schedule).
- Window positions ``p(t)`` for SimPrune (METHOD.md §3): ``sliding`` (``p = t``, the method),
  ``prune_dissimilar`` (``p = 0``), ``prune_similar`` (``p = 1``), ``two_stage`` (0 then 1 at
  ``t = 0.5``) and ``two_stage_reverse`` (1 then 0). Any of them can end early: with ``reach``
  ``r ∈ (0, 1]`` the schedule runs over ``[0, r]`` and holds its end after, ``p(t) = f(min(1, t / r))``
  (``sliding`` with ``r = 0.5`` reaches the least similar pairs half-way through training).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from simprune.registry import Registry
from simprune.tokens import check_keep_rate

WINDOWS: Registry[Callable[[float], float]] = Registry("window schedule")


def _check_progress(t: float) -> float:
    if not -1e-9 <= t <= 1.0 + 1e-9:
        raise ValueError(f"training progress must be in [0, 1], got {t!r}")
    return min(max(t, 0.0), 1.0)


@WINDOWS.register("sliding")
def sliding(t: float) -> float:
    """Easy to hard: keep the most similar pairs first, the least similar at the end."""
    return _check_progress(t)


@WINDOWS.register("prune_dissimilar")
def prune_dissimilar(t: float) -> float:
    """Static: always keep the most similar pairs."""
    _check_progress(t)
    return 0.0


@WINDOWS.register("prune_similar")
def prune_similar(t: float) -> float:
    """Static: always keep the least similar pairs."""
    _check_progress(t)
    return 1.0


@WINDOWS.register("two_stage")
def two_stage(t: float) -> float:
    """Prune dissimilar pairs for the first half of training, similar ones after."""
    return 0.0 if _check_progress(t) < 0.5 else 1.0


@WINDOWS.register("two_stage_reverse")
def two_stage_reverse(t: float) -> float:
    """Prune similar pairs for the first half, dissimilar ones after."""
    return 1.0 if _check_progress(t) < 0.5 else 0.0


def window_position(name: str, t: float, reach: float = 1.0) -> float:
    """Window position ``p`` of schedule ``name`` at progress ``t``; with ``reach < 1`` the
    schedule runs over ``[0, reach]`` of training and holds its end position after."""
    window = WINDOWS.get(name)
    if check_reach(reach) == 1.0:
        return window(t)
    return window(min(1.0, _check_progress(t) / reach))


def check_reach(reach: float) -> float:
    """A window's ``reach`` must be in ``(0, 1]``."""
    if isinstance(reach, bool) or not isinstance(reach, (int, float)) or not 0.0 < reach <= 1.0:
        raise ValueError(f"window reach must be a number in (0, 1] (the training progress at which "
                         f"the window schedule ends), got {reach!r}")
    return float(reach)


#: shapes of the keep-rate warm-up between ``start`` and ``end``
RAMPS = ("cosine", "linear")


@dataclass(frozen=True)
class KeepRateSchedule:
    """Keep rate at progress ``t``: 1 before ``start``, cosine (or ``ramp = "linear"``: a line) to
    ``target`` at ``end``.

    With ``start == end`` (the default, 0) the target applies from the first step.
    EViT's recipe on 300 epochs starts at epoch 10 and reaches the target at epoch 110:
    ``KeepRateSchedule(0.7, start=10 / 300, end=110 / 300)``. PCAE's fine-tuning (METHOD.md): no
    dropping for the first 10%, a linear ramp over the next 25%:
    ``KeepRateSchedule(0.6, 0.1, 0.35, "linear")``.
    """

    target: float
    start: float = 0.0
    end: float = 0.0
    ramp: str = "cosine"

    def __post_init__(self) -> None:
        check_keep_rate(self.target)
        if self.ramp not in RAMPS:
            raise ValueError(f"unknown keep-rate ramp {self.ramp!r}; valid: {', '.join(RAMPS)}")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(
                f"keep-rate warm-up needs 0 <= start <= end <= 1, got start={self.start}, "
                f"end={self.end}"
            )

    def __call__(self, t: float) -> float:
        t = _check_progress(t)
        if t < self.start:
            return 1.0
        if t >= self.end:
            return self.target
        frac = (t - self.start) / (self.end - self.start)
        if self.ramp == "linear":
            return 1.0 + (self.target - 1.0) * frac
        return self.target + (1.0 - self.target) * 0.5 * (1.0 + math.cos(math.pi * frac))
