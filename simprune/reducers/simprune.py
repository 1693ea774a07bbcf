"""``simprune``: cross-branch similarity pruning with a sliding window (METHOD.md, paper §4).

At a point, every student patch token ``s_i`` is matched to its most cosine-similar teacher patch
token ``m(i)`` of the paired view (one batched matrix product, no bipartite assignment). The N pairs
are ranked by similarity, most similar first, and the window of ranks ``[w, w + K)``,
``w = round(p · (N − K))``, is kept. The student keeps those K tokens. The teacher keeps every
partner of a kept pair; since several students may share a partner (many-to-one), the remaining
slots up to exactly K are filled by the teacher's CLS attention, first among tokens that are no
pruned pair's partner, then among the rest. The window position ``p`` comes from a schedule
(:mod:`simprune.reducers.schedule`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from simprune.models.vit import ReductionPoint
from simprune.reducers.base import REDUCERS, PairReducer, PairStats  # PairStats: re-exported
from simprune.reducers.evit import cls_attention
from simprune.tokens import TokenState, gather_patches

METRICS = ("hidden", "keys")


def match_tokens(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Most similar teacher token of every student token.

    Args:
        student: ``[B, N, D]``; teacher: ``[B, M, D]`` (no gradient is needed through either).
    Returns:
        ``partner: [B, N]`` index into the teacher tokens and ``sim: [B, N]`` its cosine (fp32).
    """
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    sim, partner = (s @ t.transpose(1, 2)).max(dim=-1)
    return partner, sim


def window_keep(sim: Tensor, k: int, position: float) -> tuple[Tensor, Tensor]:
    """The window of ranks ``[w, w + k)`` of the pairs sorted by similarity, most similar first.

    Args:
        sim: ``[B, N]`` pair similarities; k: window size; position: ``p ∈ [0, 1]``.
    Returns:
        ``keep: [B, K]`` kept pair positions in original order and ``kept_mask: [B, N]``.
    """
    n = sim.shape[1]
    w = window_start(n, k, position)
    order = sim.argsort(dim=1, descending=True, stable=True)
    keep = order[:, w : w + k].sort(dim=1).values
    kept_mask = torch.zeros_like(sim, dtype=torch.bool).scatter(1, keep, True)
    return keep, kept_mask


def window_start(n: int, k: int, position: float) -> int:
    """``w = round(p · (N − K))`` (host arithmetic, no device sync)."""
    if not 0.0 <= position <= 1.0:
        raise ValueError(f"window position must be in [0, 1], got {position!r}")
    return int(round(position * (n - k)))


def teacher_keep(partner: Tensor, kept_mask: Tensor, teacher_attn: Tensor, k: int) -> Tensor:
    """Teacher positions to keep: all partners of kept pairs, then CLS attention fills up to K.

    Args:
        partner: ``[B, N]`` teacher partner of each student token; kept_mask: ``[B, N]`` kept pairs;
        teacher_attn: ``[B, M]`` the teacher's CLS attention over its patch tokens; k: ``K <= M``.
    Returns:
        ``[B, K]`` teacher positions in original order.
    """
    b, m = teacher_attn.shape
    # scatter into an extra column that absorbs the non-kept pairs, then drop it
    kp = torch.zeros(b, m + 1, dtype=torch.bool, device=partner.device)
    kp.scatter_(1, partner.masked_fill(~kept_mask, m), True)
    pp = torch.zeros(b, m + 1, dtype=torch.bool, device=partner.device)
    pp.scatter_(1, partner.masked_fill(kept_mask, m), True)
    kept_partner, pruned_partner = kp[:, :m], pp[:, :m]
    # Tiers: 2 = kept pair's partner (always fits: at most K), 1 = no pruned pair's partner,
    # 0 = only a pruned pair's partner. CLS attention breaks ties within a tier, position ties of
    # attention. Ranked lexicographically by (tier, attention) with two stable sorts: a fp32 sum
    # such as 2·tier + attention would round attention gaps below ~2.4e-7 away.
    tier = torch.where(kept_partner, 2, torch.where(pruned_partner, 0, 1)).to(torch.int8)
    by_attn = teacher_attn.float().argsort(dim=1, descending=True, stable=True)
    by_tier = tier.gather(1, by_attn).argsort(dim=1, descending=True, stable=True)
    return by_attn.gather(1, by_tier[:, :k]).sort(dim=1).values


def pair_stats(partner: Tensor, sim: Tensor, kept_mask: Tensor, m: int, position: float,
               start: int) -> PairStats:
    """Diagnostics of one pair reduction (all on device, no host sync)."""
    b, n = sim.shape
    k = kept_mask.sum(1).clamp(min=1)
    kp = torch.zeros(b, m + 1, dtype=torch.bool, device=sim.device)
    kp.scatter_(1, partner.masked_fill(~kept_mask, m), True)
    kp = kp[:, :m]
    pruned = ~kept_mask
    collide = kp.gather(1, partner) & pruned
    m2o = collide.sum().float() / pruned.sum().clamp(min=1).float()
    dup = 1.0 - (kp.sum(1).float() / k.float()).mean()
    return PairStats(
        position=position,
        start=start,
        sim_mean=sim.mean().detach(),
        sim_kept=(sim * kept_mask).sum().detach() / kept_mask.sum().clamp(min=1),
        many_to_one=m2o.detach(),
        dup_partners=dup.detach(),
    )


def match_features(point: ReductionPoint, metric: str) -> Tensor:
    """Patch features used for matching: hidden states or head-averaged keys. ``[B, N, d]``."""
    if metric == "keys":
        if point.extras.k is None:
            raise RuntimeError("metric='keys' needs the backbone run with need={'qk'}")
        return point.extras.k.detach().mean(1)[:, point.state.num_prefix :]
    return point.state.patches.detach()


@REDUCERS.register("simprune")
class SimPruneReducer(PairReducer):
    """The pair reducer. Call with the student point, the *paired* teacher point, K and ``p``."""

    name = "simprune"
    needs: ClassVar[frozenset[str]] = frozenset({"cls_attn"})

    def __init__(self, metric: str = "hidden") -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown SimPrune metric {metric!r}; valid: {', '.join(METRICS)}")
        self.metric = metric

    @property
    def student_needs(self) -> frozenset[str]:
        return frozenset({"qk"}) if self.metric == "keys" else frozenset()

    @property
    def teacher_needs(self) -> frozenset[str]:
        return frozenset({"cls_attn"}) | self.student_needs

    def reduce_pair(
        self, student: ReductionPoint, teacher: ReductionPoint, k: int, position: float
    ) -> tuple[TokenState, TokenState, PairStats]:
        """Reduce a student sequence and its paired teacher sequence to K patch tokens each."""
        s_state, t_state = student.state, teacher.state
        check_pair(s_state, t_state)
        partner, sim = match_tokens(match_features(student, self.metric),
                                    match_features(teacher, self.metric))
        n, m = s_state.num_patches, t_state.num_patches
        k_t = min(k, m)
        start = window_start(n, k, position)
        keep, kept_mask = window_keep(sim, k, position)
        t_keep = teacher_keep(partner, kept_mask, cls_attention(teacher), k_t)
        stats = pair_stats(partner, sim, kept_mask, m, position, start)
        return gather_patches(s_state, keep), gather_patches(t_state, t_keep), stats

    def reduce_against(
        self, student: ReductionPoint, teacher_tokens: Tensor, k: int, position: float
    ) -> tuple[TokenState, PairStats]:
        """Prune a student sequence against fixed teacher tokens ``[B, M, D]`` (local views).

        Only the student is reduced; the teacher tokens are those a global pair kept.
        """
        s_state = student.state
        if s_state.x.shape[-1] != teacher_tokens.shape[-1]:
            raise ValueError(f"student tokens have width {s_state.x.shape[-1]}, teacher tokens "
                             f"{teacher_tokens.shape[-1]}; they must be equal")
        partner, sim = match_tokens(s_state.patches.detach(), teacher_tokens.detach())
        start = window_start(s_state.num_patches, k, position)
        keep, kept_mask = window_keep(sim, k, position)
        stats = pair_stats(partner, sim, kept_mask, teacher_tokens.shape[1], position, start)
        return gather_patches(s_state, keep), stats


def check_pair(student: TokenState, teacher: TokenState) -> None:
    """Student and teacher sequences must agree in batch and width."""
    if student.x.shape[-1] != teacher.x.shape[-1]:
        raise ValueError(
            f"student tokens have width {student.x.shape[-1]} but teacher tokens have width "
            f"{teacher.x.shape[-1]}; SimPrune needs student and teacher of the same width"
        )
    if student.x.shape[0] != teacher.x.shape[0]:
        raise ValueError(f"student batch {student.x.shape[0]} != teacher batch "
                         f"{teacher.x.shape[0]}; pair each student view with one teacher view")
