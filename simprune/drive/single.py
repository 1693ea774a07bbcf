"""Drive one branch through its reduction points with a one-branch reducer."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from simprune.models.vit import ReductionPoint, VisionTransformer
from simprune.reducers.base import TokenReducer
from simprune.tokens import TokenState, check_keep_rate, num_keep


@dataclass
class PointRecord:
    """What happened at one reduction point of one branch.

    Attributes:
        block: 1-indexed block; tokens_in / tokens_out: patch tokens before and after
        (``tokens_out`` includes a fused token); ids: ``[B, tokens_out]`` original patch index of
        every kept token (``-1`` for a fused token); source: ``[B, N0]`` where each original patch's
        content now lives (``-1`` dropped), for drawing masks and merge groups.
    """

    block: int
    tokens_in: int
    tokens_out: int
    ids: Tensor
    source: Tensor


@dataclass
class Reduced:
    """Final normalised tokens of a branch and the record of each reduction point."""

    state: TokenState
    points: list[PointRecord] = field(default_factory=list)

    @property
    def cls(self) -> Tensor:
        """``[B, D]`` final CLS token."""
        return self.state.x[:, 0]


def rates_per_point(keep_rate: float | Sequence[float], num_points: int) -> list[float]:
    """One keep rate per reduction point (a single rate applies at every point)."""
    if isinstance(keep_rate, (int, float)):
        rates = [float(keep_rate)] * num_points
    else:
        rates = [float(r) for r in keep_rate]
        if len(rates) != num_points:
            raise ValueError(f"got {len(rates)} keep rates {rates} for {num_points} reduction "
                             "points; give one rate or one per point")
    for r in rates:
        check_keep_rate(r)
    return rates


def record(point_block: int, before: TokenState, after: TokenState) -> PointRecord:
    return PointRecord(point_block, before.num_patches, after.num_patches, after.ids, after.source)


def finish(gen: Generator, value: TokenState | None) -> tuple[ReductionPoint | None, TokenState | None]:
    """Send ``value``; return ``(next point, None)`` or ``(None, final state)``."""
    try:
        return gen.send(value), None
    except StopIteration as stop:
        return None, stop.value


def forward_reduced(
    model: VisionTransformer,
    images: Tensor,
    reducer: TokenReducer | None = None,
    keep_rate: float | Sequence[float] = 1.0,
) -> Reduced:
    """Forward ``images: [B, C, H, W]`` with ``reducer`` at the model's reduction points.

    ``K = round(rate · N)`` at each point, ``N`` the patch tokens arriving there (a fused token
    counts). A point whose K equals N is skipped. Pair reducers need
    :func:`simprune.drive.lockstep_forward` instead.
    """
    if reducer is not None and reducer.is_pair:
        raise TypeError(f"{reducer.name!r} is a pair reducer; use lockstep_forward or dual_forward")
    rates = rates_per_point(keep_rate, len(model.reduce_at))
    gen = model.stages(images, reducer.needs if reducer is not None else frozenset())
    out = Reduced(state=None)  # type: ignore[arg-type]
    point, final = finish(gen, None)
    while point is not None:
        state = point.state
        k = num_keep(state.num_patches, rates[point.index])
        reduced = None
        if reducer is not None and k < state.num_patches:
            reduced = reducer(point, k)
        out.points.append(record(point.block, state, reduced if reduced is not None else state))
        point, final = finish(gen, reduced)
    out.state = final
    return out
