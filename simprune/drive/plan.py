"""A branch's reduction plan: which reducer runs at its points, and at which keep rate when."""

from __future__ import annotations

from dataclasses import dataclass

from simprune.reducers.base import TokenReducer
from simprune.reducers.schedule import WINDOWS, KeepRateSchedule, window_position


@dataclass(frozen=True)
class ReductionPlan:
    """A reducer (``None``: dense) and its schedules over training progress ``t ∈ [0, 1]``.

    Attributes:
        reducer: the reducer run at every reduction point of the branch, or ``None``.
        keep: keep rate per point over progress (EViT's warm-up when it has one).
        window: a pair reducer's window schedule name (``sliding``, ``prune_similar``, ...).
    """

    reducer: TokenReducer | None = None
    keep: KeepRateSchedule = KeepRateSchedule(1.0)
    window: str = "sliding"

    def __post_init__(self) -> None:
        WINDOWS.get(self.window)  # unknown window: KeyError listing the known ones

    @property
    def dense(self) -> bool:
        return self.reducer is None

    @property
    def is_pair(self) -> bool:
        return self.reducer is not None and self.reducer.is_pair

    def keep_rate(self, t: float) -> float:
        return self.keep(t) if self.reducer is not None else 1.0

    def position(self, t: float) -> float:
        """The window position (pair reducers, whose ``reach`` may end the schedule early; 0
        otherwise)."""
        if not self.is_pair:
            return 0.0
        return window_position(self.window, t, getattr(self.reducer, "reach", 1.0))


DENSE_PLAN = ReductionPlan()
