"""SimPrune's masked-token alignment for DINOv2-style training (paper appendix A.4; METHOD.md).

The student sees a masked view, the teacher the same view unmasked, and the two are paired view
with view (not across views as in DINO). At a reduction point:

- a student token at a masked position ``p`` pairs with the teacher token of the same position
  ``p`` (identity), its similarity the cosine between the two;
- every other student token pairs with its most cosine-similar teacher token, as in SimPrune;
- all pairs are ranked by similarity and the usual window ``[w, w + K)`` keeps ``K`` of them; the
  teacher keeps every kept pair's partner first (:func:`~simprune.reducers.simprune.teacher_keep`),
  so a kept masked pair is kept in both branches and a masked token whose pair is pruned leaves
  the student.

Option ``protect_masked``: every masked pair is kept and ``K`` applies to the rest. Rows of a batch
hold different numbers of masked tokens, and a batch needs one count, so each row keeps
``K' = min(N, M + round(r·(N − M)))`` pairs, ``M`` the largest masked count the batch can have (the
largest target of the step's masking plan, known on the host): its ``m_b`` masked pairs and the
window ``[w, w + K' − m_b)`` of its visible pairs ranked by similarity, ``w = round(p·(N − K'))``
(the same for every row). This keeps more tokens than ``K``, so it changes the FLOPs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from simprune.models.vit import ReductionPoint
from simprune.reducers.base import PairStats
from simprune.reducers.evit import cls_attention
from simprune.reducers.simprune import (
    SimPruneReducer,
    check_pair,
    match_features,
    match_tokens,
    pair_stats,
    teacher_keep,
    window_keep,
    window_start,
)
from simprune.tokens import TokenState, gather_patches, num_keep


def identity_partner(student_ids: Tensor, teacher_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Teacher position holding each student token's original patch.

    Args:
        student_ids: ``[B, N]``; teacher_ids: ``[B, M]`` (``-1``: no original patch).
    Returns:
        ``pos: [B, N]`` (0 where not found) and ``found: [B, N]`` bool.
    """
    eq = (student_ids.unsqueeze(-1) == teacher_ids.unsqueeze(1)) & (student_ids >= 0).unsqueeze(-1)
    return eq.to(torch.uint8).argmax(dim=-1), eq.any(dim=-1)


def aligned_match(student: Tensor, teacher: Tensor, student_ids: Tensor, teacher_ids: Tensor,
                  masked: Tensor) -> tuple[Tensor, Tensor]:
    """A.4's partners: identity for masked student tokens, argmax cosine for the others.

    Args:
        student: ``[B, N, d]``, teacher: ``[B, M, d]`` matching features; masked: ``[B, N]`` bool.
    Returns:
        ``partner: [B, N]`` teacher position and ``sim: [B, N]`` the pair's cosine (fp32).
    """
    partner, sim, _ = match_tokens(student, teacher)  # argmax (A.4 pairs visible tokens so)
    pos, found = identity_partner(student_ids, teacher_ids)
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    same = (s * t.gather(1, pos.unsqueeze(-1).expand(-1, -1, t.shape[-1]))).sum(-1)
    use = masked & found
    return torch.where(use, pos, partner), torch.where(use, same, sim)


def protected_keep(sim: Tensor, masked: Tensor, k: int, position: float) -> tuple[Tensor, Tensor]:
    """Every masked pair, then the window ``[w, w + k − m_b)`` of the visible pairs ranked by
    similarity, ``w = round(p·(N − k))``; requires ``m_b <= k`` in every row.

    Returns:
        ``keep: [B, k]`` kept positions in original order and ``kept_mask: [B, N]``.
    """
    n = sim.shape[1]
    w = window_start(n, k, position)
    key = torch.where(masked, sim.float() + 4.0, sim.float())  # cosines are in [-1, 1]
    order = key.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=sim.device).expand_as(order))
    m_b = masked.sum(1, keepdim=True)
    kept_mask = masked | ((rank >= w + m_b) & (rank < w + k))
    keep = kept_mask.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :k]
    return keep.sort(dim=1).values, kept_mask


def protected_count(n: int, keep_rate: float, masked_max: int) -> int:
    """``K' = min(N, M + round(r·(N − M)))``: what each row keeps with ``protect_masked``."""
    m = min(n, max(0, masked_max))
    return min(n, m + (num_keep(n - m, keep_rate) if n > m else 0))


def reduce_aligned(reducer: SimPruneReducer, student: ReductionPoint, teacher: ReductionPoint,
                   masked: Tensor, k: int, position: float,
                   protect: bool = False) -> tuple[TokenState, TokenState, PairStats]:
    """Reduce a masked student sequence and the teacher's unmasked sequence of the same view.

    Args:
        student, teacher: the points of the same view (row ``b`` is the same crop in both).
        masked: ``[B, N]`` bool, the student token sits at a masked position.
        k: patch tokens each branch keeps (with ``protect``: ``K'`` of :func:`protected_count`).
    Returns:
        the reduced student and teacher states and the pair statistics.
    """
    s_state, t_state = student.state, teacher.state
    check_pair(s_state, t_state)
    if reducer.matching != "argmax":
        raise ValueError(f"A.4's alignment pairs the visible tokens by argmax; SimPrune matching "
                         f"{reducer.matching!r} does not apply to it")
    partner, sim = aligned_match(match_features(student, reducer.metric),
                                 match_features(teacher, reducer.metric),
                                 s_state.ids, t_state.ids, masked)
    n, m = s_state.num_patches, t_state.num_patches
    if protect:
        keep, kept_mask = protected_keep(sim, masked, k, position)
    else:
        keep, kept_mask = window_keep(sim, k, position)
    t_keep = teacher_keep(partner, kept_mask, cls_attention(teacher), min(k, m))
    stats = pair_stats(partner, sim, kept_mask, m, position, window_start(n, k, position), t_keep)
    return gather_patches(s_state, keep), gather_patches(t_state, t_keep), stats


__all__ = ["aligned_match", "identity_partner", "protected_count", "protected_keep", "reduce_aligned"]
