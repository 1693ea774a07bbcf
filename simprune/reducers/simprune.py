"""``simprune``: cross-branch similarity pruning with a sliding window (METHOD.md, paper §4).

At a point, every student patch token ``s_i`` is matched to its most cosine-similar teacher patch
token ``m(i)`` of the paired view (one batched matrix product, no bipartite assignment). The N pairs
are ranked by similarity, most similar first, and the window of ranks ``[w, w + K)``,
``w = round(p · (N − K))``, is kept. The student keeps those K tokens. The teacher keeps every
partner of a kept pair; since several students may share a partner (many-to-one), the remaining
slots up to exactly K are filled by the teacher's CLS attention, first among tokens that are no
pruned pair's partner, then among the rest. The window position ``p`` comes from a schedule
(:mod:`simprune.reducers.schedule`), optionally compressed to end at progress ``reach``.

Options beyond the paper (its behaviour is the default): ``matching = "one_to_one"`` pairs each
student token with a distinct teacher token (:func:`assign_one_to_one`), which bounds many-to-one
to zero and so leaves the fill-up nothing to fill; ``reach < 1`` ends the window schedule early.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from simprune.models.vit import ReductionPoint
from simprune.reducers.base import REDUCERS, PairReducer, PairStats  # PairStats: re-exported
from simprune.reducers.evit import cls_attention
from simprune.reducers.schedule import check_reach
from simprune.tokens import TokenState, gather_patches

METRICS = ("hidden", "keys")
#: how student tokens are paired with teacher tokens: the paper's per-student argmax (several
#: students may share a partner), or a greedy one-to-one assignment (:func:`assign_one_to_one`)
MATCHINGS = ("argmax", "one_to_one")
#: proposal rounds of :func:`assign_one_to_one` before its fallback
ONE_TO_ONE_ROUNDS = 8


def match_tokens(student: Tensor, teacher: Tensor, matching: str = "argmax",
                 rounds: int = ONE_TO_ONE_ROUNDS) -> tuple[Tensor, Tensor, Tensor | None]:
    """The teacher partner of every student token: its most similar one (``"argmax"``), or a
    distinct one per student (``"one_to_one"``, :func:`assign_one_to_one`, needs ``N <= M``).

    Args:
        student: ``[B, N, D]``; teacher: ``[B, M, D]`` (no gradient is needed through either).
    Returns:
        ``partner: [B, N]`` index into the teacher tokens, ``sim: [B, N]`` its cosine (fp32), and
        for ``"one_to_one"`` the ``[B, N]`` mask of the students its fallback placed (else ``None``).
    """
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    cos = s @ t.transpose(1, 2)
    if matching == "argmax":
        sim, partner = cos.max(dim=-1)
        return partner, sim, None
    if matching != "one_to_one":
        raise ValueError(f"unknown SimPrune matching {matching!r}; valid: {', '.join(MATCHINGS)}")
    partner, left = assign_one_to_one(cos, rounds)
    return partner, cos.gather(2, partner.unsqueeze(-1)).squeeze(-1), left


def assign_one_to_one(sim: Tensor, rounds: int = ONE_TO_ONE_ROUNDS) -> tuple[Tensor, Tensor]:
    """A greedy one-to-one assignment of ``N`` students to ``M >= N`` teachers, by proposals.

    Each round, every unassigned student proposes to its most similar unassigned teacher; each
    teacher that receives proposals accepts the most similar proposer (the lowest student index
    among equals; among equally similar teachers a student proposes to the one ``max`` returns, as
    the argmax matching does), and both leave the pool. Where the argmax is already one-to-one,
    every proposal of the first round is accepted: the result is the argmax; a student whose argmax
    partner nobody else wants keeps it. Students still unassigned after ``rounds`` rounds take the
    unassigned teachers in index order (the i-th such student, by index, the i-th such teacher).
    Vectorised over the batch and the tokens; the loop is over the fixed number of rounds, each one
    ``max`` over ``[B, N, M]`` and a few ``[B, M]`` scatters.

    Args:
        sim: ``[B, N, M]`` similarities (fp32); rounds: proposal rounds (``>= 1``).
    Returns:
        ``partner: [B, N]``, distinct within each row, and ``left: [B, N]``, the students the
        fallback placed.
    """
    partner, left = proposal_rounds(sim, rounds)
    # fallback: the r-th unassigned student (by index) takes the r-th unassigned teacher
    b, n, m = sim.shape
    taken = torch.zeros(b, m + 1, dtype=torch.bool, device=sim.device)
    taken.scatter_(1, partner.masked_fill(left, m), True)
    rank = (left.long().cumsum(1) - 1).clamp(min=0)
    free_first = taken[:, :m].to(torch.uint8).argsort(dim=1, stable=True)
    return torch.where(left, free_first.gather(1, rank), partner), left


def proposal_rounds(sim: Tensor, rounds: int) -> tuple[Tensor, Tensor]:
    """The proposal rounds of :func:`assign_one_to_one` without its fallback.

    Returns:
        ``partner: [B, N]`` (meaningful where assigned) and ``left: [B, N]``, the students still
        unassigned after ``rounds`` rounds.
    """
    b, n, m = sim.shape
    if n > m:
        raise ValueError(f"one-to-one matching needs no more student tokens than teacher tokens, "
                         f"got {n} students and {m} teachers")
    if rounds < 1:
        raise ValueError(f"one-to-one matching needs rounds >= 1, got {rounds}")
    dev = sim.device
    partner = torch.zeros(b, n, dtype=torch.long, device=dev)
    s_free = torch.ones(b, n, dtype=torch.bool, device=dev)
    work = index_keys(sim)  # keys naming the teacher; assigned teachers' columns become -inf
    i = torch.arange(n, device=dev)
    low = 2**_KEY_BITS - 1
    for _ in range(rounds):
        bits = work.amax(dim=-1).view(torch.int64)  # each student's best unassigned teacher
        best = key_index(bits.view(torch.float64), m)
        # the same similarity keyed by the student (lowest index first among equals), so that a
        # teacher's best proposal names its proposer
        code = (bits >> 63).bitwise_and_(2 * i - (n - 1)).add_(n - 1 - i)
        offer = ((bits & ~low) | code).view(torch.float64).masked_fill_(~s_free, float("-inf"))
        target = best.masked_fill(~s_free, m)  # column m: no proposal
        top = torch.full((b, m + 1), float("-inf"), dtype=torch.float64, device=dev)
        top.scatter_reduce_(1, target, offer, "amax")
        won = s_free & (top.gather(1, target) == offer)
        partner = torch.where(won, best, partner)
        s_free &= ~won
        gone = torch.zeros(b, 1, m + 1, dtype=work.dtype, device=dev)
        gone.scatter_(2, target.masked_fill_(~won, m).unsqueeze(1), float("-inf"))
        work.add_(gone[..., :m])
    return partner, s_free


#: low mantissa bits of a float64 that a float32 leaves zero: :func:`index_keys` stores the index there
_KEY_BITS = 29


def index_keys(sim: Tensor) -> Tensor:
    """``[..., M]`` fp32 similarities as fp64 keys whose maximum also names its position.

    A float32 widened to float64 leaves the low 29 mantissa bits zero; the column index goes there,
    coded so that among equal values the lowest index has the largest key (``M - 1 - j`` for
    positive values, ``j`` for negative ones, whose magnitude grows the other way). Distinct
    float32 values keep their order, so ``amax`` over the keys (several times cheaper on CPU than
    ``max`` with indices) finds the same maximum, and the lowest index among ties, as ``max`` does.
    ``-0.0`` counts as ``+0.0``. Decode with :func:`key_index`.
    """
    m = sim.shape[-1]
    if m > 2**_KEY_BITS:
        raise ValueError(f"index keys hold at most 2**{_KEY_BITS} columns, got {m}")
    bits = (sim.float() + 0.0).double().view(torch.int64)  # + 0.0: -0.0 becomes +0.0
    j = torch.arange(m, device=sim.device)
    # (m - 1 - j) where the sign bit is clear, j where it is set, without a (slow) where
    code = (bits >> 63).bitwise_and_(2 * j - (m - 1)).add_(m - 1 - j)
    return bits.bitwise_or_(code).view(torch.float64)


def key_index(key: Tensor, m: int) -> Tensor:
    """The column index stored in keys of :func:`index_keys` over ``m`` columns (int64)."""
    code = key.view(torch.int64) & (2**_KEY_BITS - 1)
    return torch.where(key < 0, code, m - 1 - code)


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
               start: int, t_keep: Tensor | None = None, left: Tensor | None = None) -> PairStats:
    """Diagnostics of one pair reduction (all on device, no host sync); ``t_keep: [B, K_t]``, the
    teacher positions kept (``None``: the teacher is not reduced, e.g. local views); ``left``:
    the one-to-one matching's fallback mask (``None``: argmax matching)."""
    b, n = sim.shape
    k = kept_mask.sum(1).clamp(min=1)
    kp = torch.zeros(b, m + 1, dtype=torch.bool, device=sim.device)
    kp.scatter_(1, partner.masked_fill(~kept_mask, m), True)
    kp = kp[:, :m]
    pruned = ~kept_mask
    collide = kp.gather(1, partner) & pruned
    m2o = collide.sum().float() / pruned.sum().clamp(min=1).float()
    dup = 1.0 - (kp.sum(1).float() / k.float()).mean()
    fill = None if t_keep is None else 1.0 - kp.gather(1, t_keep).float().mean()
    return PairStats(
        position=position,
        start=start,
        sim_mean=sim.mean().detach(),
        sim_kept=(sim * kept_mask).sum().detach() / kept_mask.sum().clamp(min=1),
        many_to_one=m2o.detach(),
        dup_partners=dup.detach(),
        fill_up=None if fill is None else fill.detach(),
        fallback=None if left is None else left.float().mean(),
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

    def __init__(self, metric: str = "hidden", matching: str = "argmax", reach: float = 1.0,
                 rounds: int = ONE_TO_ONE_ROUNDS) -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown SimPrune metric {metric!r}; valid: {', '.join(METRICS)}")
        if matching not in MATCHINGS:
            raise ValueError(f"unknown SimPrune matching {matching!r}; valid: {', '.join(MATCHINGS)}")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"SimPrune rounds (of the one-to-one matching) must be an integer >= 1, "
                             f"got {rounds!r}")
        if rounds != ONE_TO_ONE_ROUNDS and matching != "one_to_one":
            raise ValueError(f"SimPrune rounds={rounds} applies to matching = 'one_to_one' only, "
                             f"not {matching!r}")
        self.metric = metric
        self.matching = matching
        self.reach = check_reach(reach)
        self.rounds = rounds

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
        partner, sim, left = match_tokens(match_features(student, self.metric),
                                          match_features(teacher, self.metric), self.matching,
                                          self.rounds)
        n, m = s_state.num_patches, t_state.num_patches
        k_t = min(k, m)
        start = window_start(n, k, position)
        keep, kept_mask = window_keep(sim, k, position)
        t_keep = teacher_keep(partner, kept_mask, cls_attention(teacher), k_t)
        stats = pair_stats(partner, sim, kept_mask, m, position, start, t_keep, left)
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
        partner, sim, left = match_tokens(s_state.patches.detach(), teacher_tokens.detach(),
                                          self.matching, self.rounds)
        start = window_start(s_state.num_patches, k, position)
        keep, kept_mask = window_keep(sim, k, position)
        stats = pair_stats(partner, sim, kept_mask, teacher_tokens.shape[1], position, start,
                           left=left)
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
