"""The DINOv2-style dual forward: the student's global views masked at point 0, the teacher's not,
and the two branches reduced at the later points (METHOD.md "DINOv2-style training").

Both backbones reduce at ``(0, *points)``. At point 0 the student's masked patch embeddings are
replaced by the mask token (:func:`apply_mask_token`: ``mask_token + pos_p`` where the patch
embedding was, i.e. the mask token replaces the embedding *before* the position embedding is
added); the teacher and the student's local views pass point 0 unchanged.

At every later point:

- a **pair reducer** (SimPrune) reduces each student global view against the teacher's unmasked
  sequence **of the same view** (row ``b`` with row ``b``, no roll), with A.4's alignment
  (:func:`simprune.reducers.aligned.reduce_aligned`: masked positions by identity); local views are
  reduced against the teacher tokens kept of global view ``j mod 2``, as in
  :func:`~simprune.drive.lockstep_forward`;
- a **one-branch reducer** (EViT, ToMe, Expediting ViT, ...) runs on each branch independently, as
  the paper applies them to SSL;
- no reducer: dense.

The returned :class:`~simprune.drive.DualOutput` has one :class:`~simprune.drive.PairPoint` per
point after point 0 (masking changes no token count).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from simprune.drive.lockstep import DualOutput, PairPoint, close_branches, record_of
from simprune.drive.single import Reduced, finish, rates_per_point
from simprune.models.vit import VisionTransformer
from simprune.reducers.aligned import protected_count, reduce_aligned
from simprune.reducers.base import TokenReducer
from simprune.tokens import TokenState, num_keep


def apply_mask_token(state: TokenState, mask: Tensor, mask_token: Tensor,
                     pos_patches: Tensor) -> TokenState:
    """Replace the masked patch embeddings by the mask token (before the position embedding).

    Args:
        state: the point-0 state ``[B, 1 + N, D]`` (patch embedding + position embedding).
        mask: ``[B, N]`` bool; mask_token: ``[D]``; pos_patches: ``[1, N, D]`` the patches'
            position embedding.
    """
    patches = state.patches
    filled = (mask_token + pos_patches).to(patches.dtype).expand_as(patches)
    new = torch.where(mask.unsqueeze(-1), filled, patches)
    return state.with_x(torch.cat([state.prefix, new], dim=1))


def masked_rows(mask: Tensor, ids: Tensor) -> Tensor:
    """``[B, N]`` bool: the token (original patch ``ids``) sits at a masked position of ``mask``
    ``[B, N0]`` (``-1`` ids: never)."""
    return mask.gather(1, ids.clamp(min=0)) & (ids >= 0)


def _local_anchor_rows(num_local_rows: int, batch: int, device: torch.device) -> Tensor:
    r = torch.arange(num_local_rows, device=device)
    return ((r // batch) % 2) * batch + r % batch


def _check_points(student: VisionTransformer, teacher: VisionTransformer) -> tuple[int, ...]:
    pts = student.reduce_at
    if not pts or pts[0] != 0:
        raise ValueError(f"masking happens at point 0, but the student reduces at {list(pts)}; "
                         "set_reduce_at((0, ...)) first")
    if teacher.reduce_at != pts:
        raise ValueError(f"student reduces at {list(pts)}, teacher at {list(teacher.reduce_at)}; "
                         "they must agree")
    return pts[1:]


def masked_dual_forward(
    student: VisionTransformer,
    teacher: VisionTransformer,
    student_global: Tensor,
    teacher_global: Tensor,
    mask: Tensor,
    mask_token: Tensor,
    reducer: TokenReducer | None,
    keep_rate: float | Sequence[float] = 1.0,
    position: float = 0.0,
    student_local: Tensor | None = None,
    protect_masked: bool = False,
    masked_max: int = 0,
    num_global: int = 2,
    teacher_reducer: TokenReducer | None | str = "same",
) -> DualOutput:
    """Both branches of a DINOv2-style step.

    Args:
        student_global, teacher_global: ``[G·B, C, H, W]`` the same global crops, view-major.
        mask: ``[G·B, N]`` bool, the student's masked patches; mask_token: ``[D]``.
        reducer: a pair reducer (A.4 alignment), a one-branch reducer or ``None``.
        keep_rate: one rate, or one per point after point 0; position: the window position.
        student_local: ``[L·B, C, h, w]`` local crops (student only, unmasked) or ``None``.
        protect_masked: keep every masked pair (pair reducer only); masked_max: the largest masked
            count a row can have (what ``protect_masked`` sizes the kept count by).
        teacher_reducer: the teacher's own one-branch reducer (``None``: dense); ``"same"``: the
            student's. A pair reducer admits only ``"same"``.
    """
    points = _check_points(student, teacher)
    if student_global.shape[0] != teacher_global.shape[0] or mask.shape[0] != student_global.shape[0]:
        raise ValueError(f"student ({student_global.shape[0]}), teacher ({teacher_global.shape[0]}) "
                         f"and mask ({mask.shape[0]}) rows must match")
    if student_global.shape[0] % num_global:
        raise ValueError(f"{student_global.shape[0]} global rows are not {num_global} views of one batch")
    if protect_masked and (reducer is None or not reducer.is_pair):
        raise ValueError("protect_masked keeps masked pairs: it needs a pair reducer (simprune)")
    batch = student_global.shape[0] // num_global
    rates = rates_per_point(keep_rate, len(points))
    pair = reducer is not None and reducer.is_pair
    t_reducer = reducer if teacher_reducer == "same" else teacher_reducer
    if pair and t_reducer is not reducer:
        raise ValueError(f"pair reducer {reducer.name!r} reduces both branches together; the "  # type: ignore[union-attr]
                         "teacher cannot have its own plan")
    if isinstance(t_reducer, str) or (not pair and t_reducer is not None and t_reducer.is_pair):
        raise ValueError(f"teacher_reducer must be a one-branch reducer, None or 'same', got {t_reducer!r}")
    if pair:
        s_need, t_need = reducer.student_needs, reducer.teacher_needs  # type: ignore[union-attr]
    else:
        s_need = reducer.needs if reducer is not None else frozenset()
        t_need = t_reducer.needs if t_reducer is not None else frozenset()  # type: ignore[union-attr]
    grid = student.grid_size
    pos_patches = student.interpolate_pos_embed(grid)[:, 1:]
    s_gen = student.stages(student_global, s_need)
    t_gen = teacher.stages(teacher_global, t_need)
    l_gen = student.stages(student_local, s_need) if student_local is not None else None

    with torch.no_grad():
        t_pt, t_final = finish(t_gen, None)
    s_pt, s_final = finish(s_gen, None)
    l_pt, l_final = finish(l_gen, None) if l_gen is not None else (None, None)
    # point 0: the student's global views are masked, the rest pass
    s_pt, s_final = finish(s_gen, apply_mask_token(s_pt.state, mask, mask_token, pos_patches))
    with torch.no_grad():
        t_pt, t_final = finish(t_gen, None)
    if l_gen is not None:
        l_pt, l_final = finish(l_gen, None)

    out = DualOutput(Reduced(None), Reduced(None), Reduced(None) if l_gen else None)  # type: ignore[arg-type]
    while s_pt is not None:
        rate = rates[s_pt.index - 1]
        s_state = s_pt.state
        n = s_state.num_patches
        k = protected_count(n, rate, masked_max) if protect_masked else num_keep(n, rate)
        s_new = t_new = l_new = None
        stats = l_stats = None
        if pair and k < n:
            s_new, t_new, stats = reduce_aligned(reducer, s_pt, t_pt,  # type: ignore[arg-type]
                                                 masked_rows(mask, s_state.ids), k, position,
                                                 protect_masked)
        elif not pair:
            if reducer is not None and k < n:
                s_new = reducer(s_pt, k)
            k_t = num_keep(t_pt.state.num_patches, rate)
            if t_reducer is not None and k_t < t_pt.state.num_patches:
                with torch.no_grad():
                    t_new = t_reducer(t_pt, k_t)  # type: ignore[operator]
        point = PairPoint(s_pt.block, rate, record_of(s_pt, s_new), record_of(t_pt, t_new), stats=stats)
        if l_pt is not None:
            k_l = num_keep(l_pt.state.num_patches, rate)
            if k_l < l_pt.state.num_patches and reducer is not None:
                if pair:
                    anchors = (t_new if t_new is not None else t_pt.state).patches
                    rows = _local_anchor_rows(l_pt.state.x.shape[0], batch, anchors.device)
                    l_new, l_stats = reducer.reduce_against(l_pt, anchors[rows], k_l, position)  # type: ignore[attr-defined]
                else:
                    l_new = reducer(l_pt, k_l)
            point.local, point.local_stats = record_of(l_pt, l_new), l_stats
            l_pt, l_final = finish(l_gen, l_new)  # type: ignore[arg-type]
        out.points.append(point)
        with torch.no_grad():
            t_pt, t_final = finish(t_gen, t_new)
        s_pt, s_final = finish(s_gen, s_new)
    return close_branches(out, s_final, t_final, l_final)


__all__ = ["apply_mask_token", "masked_dual_forward", "masked_rows"]
