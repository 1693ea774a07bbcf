"""Lock-step dual-branch forward: student and teacher pause together at every reduction point.

Student global views are batched ``[v1; v2]`` (``2B``) and so are the teacher's. The pair reducer
compares the views the loss compares: student view 1 with teacher view 2 and student view 2 with
teacher view 1, i.e. the teacher batch rolled by ``B`` (METHOD.md item 6). Local views (DINO
multi-crop) are pruned after the global pairs, against the tokens the teacher kept of global view
``j mod 2`` of the same image, ``j`` the local view's index (METHOD.md item 7: we alternate so both
teacher views serve as anchors equally). The teacher runs without autograd.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from simprune.drive.single import PointRecord, Reduced, finish, forward_reduced, rates_per_point
from simprune.models.layers import AttentionExtras
from simprune.models.vit import ReductionPoint, VisionTransformer
from simprune.reducers.base import PairReducer, PairStats, TokenReducer
from simprune.tokens import TokenState, num_keep


@dataclass
class PairPoint:
    """Diagnostics of one reduction point of a dual-branch forward.

    Attributes:
        block: 1-indexed block; keep_rate: the rate applied.
        student, teacher, local: per-branch :class:`PointRecord` (``local`` when local views ran).
        stats, local_stats: SimPrune's :class:`PairStats` (``None`` for one-branch reducers).
    """

    block: int
    keep_rate: float
    student: PointRecord
    teacher: PointRecord
    local: PointRecord | None = None
    stats: PairStats | None = None
    local_stats: PairStats | None = None


@dataclass
class DualOutput:
    """Final tokens of both branches and per-point diagnostics."""

    student: Reduced
    teacher: Reduced
    local: Reduced | None = None
    points: list[PairPoint] = field(default_factory=list)


def roll_tokens(state: TokenState, shift: int) -> TokenState:
    """Roll every per-sample tensor of ``state`` along the batch by ``shift``."""
    vals = {f.name: getattr(state, f.name) for f in fields(state)}
    for name, v in vals.items():
        if isinstance(v, Tensor):
            vals[name] = v.roll(shift, dims=0)
    return TokenState(**vals)


def roll_point(point: ReductionPoint, shift: int) -> ReductionPoint:
    extras = AttentionExtras(
        **{f.name: (None if getattr(point.extras, f.name) is None
                    else getattr(point.extras, f.name).roll(shift, dims=0))
           for f in fields(point.extras)}
    )
    return ReductionPoint(point.block, point.index, roll_tokens(point.state, shift), extras)


def _teacher_rows_for_locals(num_local_rows: int, batch: int, device: torch.device) -> Tensor:
    """Row of the teacher's ``[t1; t2]`` batch each local row ``[l1; …; lL]`` pairs with."""
    r = torch.arange(num_local_rows, device=device)
    return ((r // batch) % 2) * batch + r % batch


def lockstep_forward(
    student: VisionTransformer,
    teacher: VisionTransformer,
    student_global: Tensor,
    teacher_global: Tensor,
    reducer: PairReducer,
    keep_rate: float | Sequence[float],
    position: float,
    student_local: Tensor | None = None,
    num_global: int = 2,
) -> DualOutput:
    """Run both branches to each point together and reduce them with the pair reducer.

    Args:
        student_global, teacher_global: ``[G·B, C, H, W]`` global views batched view-major.
        student_local: ``[L·B, C, h, w]`` local views (student only) or ``None``.
        keep_rate: rate per point (or one for all); position: the window position ``p``.
        num_global: ``G``; the teacher is rolled by ``B = G·B / G`` to pair the views.
    """
    if student.reduce_at != teacher.reduce_at:
        raise ValueError(f"student reduces at {student.reduce_at}, teacher at "
                         f"{teacher.reduce_at}; lock-step needs the same blocks")
    if student_global.shape[0] != teacher_global.shape[0]:
        raise ValueError(f"student has {student_global.shape[0]} global rows, teacher "
                         f"{teacher_global.shape[0]}; they must match")
    if student_global.shape[0] % num_global:
        raise ValueError(f"{student_global.shape[0]} global rows are not {num_global} views of "
                         "one batch")
    batch = student_global.shape[0] // num_global
    rates = rates_per_point(keep_rate, len(student.reduce_at))
    s_gen = student.stages(student_global, reducer.student_needs)
    l_gen = student.stages(student_local, reducer.student_needs) if student_local is not None else None
    t_gen = teacher.stages(teacher_global, reducer.teacher_needs)
    with torch.no_grad():
        t_pt, t_final = finish(t_gen, None)
    s_pt, s_final = finish(s_gen, None)
    l_pt, l_final = finish(l_gen, None) if l_gen is not None else (None, None)
    out = DualOutput(Reduced(None), Reduced(None), Reduced(None) if l_gen else None)  # type: ignore[arg-type]
    while s_pt is not None:
        rate = rates[s_pt.index]
        s_state, t_state = s_pt.state, t_pt.state
        k = num_keep(s_state.num_patches, rate)
        s_new = t_new = l_new = None
        stats = l_stats = None
        if k < s_state.num_patches:
            s_new, t_rolled, stats = reducer.reduce_pair(s_pt, roll_point(t_pt, batch), k, position)
            t_new = roll_tokens(t_rolled, -batch)
        point = PairPoint(s_pt.block, rate, record_of(s_pt, s_new), record_of(t_pt, t_new),
                          stats=stats)
        if l_pt is not None:
            k_l = num_keep(l_pt.state.num_patches, rate)
            if k_l < l_pt.state.num_patches:
                anchors = (t_new if t_new is not None else t_state).patches
                rows = _teacher_rows_for_locals(l_pt.state.x.shape[0], batch, anchors.device)
                l_new, l_stats = reducer.reduce_against(l_pt, anchors[rows], k_l, position)
            point.local, point.local_stats = record_of(l_pt, l_new), l_stats
            l_pt, l_final = finish(l_gen, l_new)
        out.points.append(point)
        with torch.no_grad():
            t_pt, t_final = finish(t_gen, t_new)
        s_pt, s_final = finish(s_gen, s_new)
    return close_branches(out, s_final, t_final, l_final)


def close_branches(out: DualOutput, student: TokenState, teacher: TokenState,
                   local: TokenState | None) -> DualOutput:
    """``out`` with each branch's final state and its per-point records (from ``out.points``)."""
    out.student.state, out.teacher.state = student, teacher
    out.student.points = [p.student for p in out.points]
    out.teacher.points = [p.teacher for p in out.points]
    if out.local is not None:
        out.local.state, out.local.points = local, [p.local for p in out.points]
    return out


def record_of(point: ReductionPoint, reduced: TokenState | None) -> PointRecord:
    after = reduced if reduced is not None else point.state
    return PointRecord(point.block, point.state.num_patches, after.num_patches, after.ids,
                       after.source)


def dual_forward(
    student: VisionTransformer,
    teacher: VisionTransformer,
    student_global: Tensor,
    teacher_global: Tensor,
    reducer: TokenReducer | None,
    keep_rate: float | Sequence[float] = 1.0,
    position: float = 0.0,
    student_local: Tensor | None = None,
    num_global: int = 2,
    teacher_reducer: TokenReducer | None | str = "same",
) -> DualOutput:
    """Both branches with any reducer: a pair reducer runs in lock-step, a one-branch reducer on
    each branch independently (how the paper applies EViT and ToMe to SSL), ``None`` is dense.

    ``teacher_reducer`` gives the teacher its own one-branch plan (``None``: dense, e.g. "prune
    the student, keep the teacher dense"); ``"same"`` uses ``reducer``. A pair reducer reduces
    both branches together, so it admits only ``"same"``.
    """
    if reducer is not None and reducer.is_pair:
        if teacher_reducer != "same" and teacher_reducer is not reducer:
            raise ValueError(f"pair reducer {reducer.name!r} reduces both branches together; the "
                             "teacher cannot have its own plan")
        return lockstep_forward(student, teacher, student_global, teacher_global, reducer,
                                keep_rate, position, student_local, num_global)
    t_reducer = reducer if teacher_reducer == "same" else teacher_reducer
    if isinstance(t_reducer, str) or (t_reducer is not None and t_reducer.is_pair):
        raise ValueError(f"teacher_reducer must be a one-branch reducer, None or 'same', got {t_reducer!r}")
    s = forward_reduced(student, student_global, reducer, keep_rate)
    loc = forward_reduced(student, student_local, reducer, keep_rate) if student_local is not None else None
    with torch.no_grad():
        t = forward_reduced(teacher, teacher_global, t_reducer, keep_rate)
    rates = rates_per_point(keep_rate, len(student.reduce_at))
    points = [
        PairPoint(sp.block, rates[i], sp, tp, loc.points[i] if loc is not None else None)
        for i, (sp, tp) in enumerate(zip(s.points, t.points))
    ]
    return DualOutput(s, t, loc, points)
