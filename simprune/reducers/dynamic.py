"""``dynamic_simprune``: learned gates choose which of SimPrune's candidate pairs to drop, under a
training-FLOPs budget (SimPrune paper §5.3; no public code: METHOD.md "Dynamic SimPrune").

At a point, every real student patch token is matched with its most cosine-similar teacher token
of the paired view (as :mod:`simprune.reducers.simprune`), and the pairs are ranked, most similar
first. The window of the schedule at keep share ``1 − candidates`` (0.5) keeps its pairs for sure;
the other ``candidates`` share of the pairs (the ones the window would prune first) are
*candidates*. A gate per point scores each candidate from its student token (mean-pool the
channels to ``D/4``, a linear layer, a sigmoid): the pair is kept when the score is at least 0.5,
dropped otherwise, in both branches together. The decision is hard in the forward; a
straight-through estimator gives the gate its gradient: a kept candidate's student token is
multiplied by ``1 + g − sg(g)`` (exactly 1 in the forward), and the batch's kept counts are
``Σ (hard + g − sg(g))``. Option ``gumbel``: logistic noise on the gate's logit, temperature
``tau`` (1), while the gates train.

Each row keeps its own number of pairs. Tokens are removed physically: the batch is padded to its
largest kept count (one host sync per point and branch: the new tensor's size depends on the
data); padded slots carry zeros, ``ids = -1``, own no original patch (``source``) and are masked as
attention keys (:attr:`simprune.tokens.TokenState.valid`), so they never change a real token and
no loss reads them. The teacher keeps the partners of the kept pairs and fills up to the same count
per row by its CLS attention (SimPrune's rule, per row), so both branches keep the same pairs.

Instead of a keep rate the user gives ``flops_budget``, a fraction of the dense step's training
FLOPs (:mod:`simprune.reducers.dynamic_cost`); :meth:`DynamicSimPruneReducer.budget_terms` turns a
step's counts into ``penalty · (f − budget)²``, which the framework adds to its loss. ``f`` is the
fraction the padded batch ran (padding, matching and gates included) with the gradient of each
row's own count. No token is dropped for the first ``warmup`` (3%) of training
(:meth:`DynamicSimPruneReducer.keep_schedule`: the lock-step driver skips the points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simprune.models.vit import ReductionPoint
from simprune.reducers.base import REDUCERS, PairReducer, PairStats
from simprune.reducers.dynamic_cost import TRAIN, ViTCost
from simprune.reducers.evit import cls_attention
from simprune.reducers.schedule import KeepRateSchedule
from simprune.reducers.simprune import check_pair, window_start
from simprune.tokens import TokenState, gather_patches


class GateBank(nn.Module):
    """One gate per reduction point: mean-pool the channels to ``D/4``, one linear, one logit.

    Created for all points by :meth:`DynamicSimPruneReducer.bind`; a reducer used without a
    framework (tests, the drivers alone) creates a point's gate when it first reaches it.
    """

    def __init__(self, dim: int, points: int = 0) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"dynamic_simprune's gates pool the width to D/4: width {dim} is not a "
                             "multiple of 4")
        self.dim = dim
        self.gates = nn.ModuleDict()
        for i in range(points):
            self.add(i)

    def add(self, index: int) -> nn.Linear:
        gate = nn.Linear(self.dim // 4, 1)
        nn.init.trunc_normal_(gate.weight, std=0.02)
        nn.init.zeros_(gate.bias)
        self.gates[str(index)] = gate
        return gate

    def forward(self, index: int, x: Tensor) -> Tensor:
        """``x: [R, N, D]`` student patch tokens -> ``[R, N]`` fp32 logits of point ``index``."""
        gate = self.gates[str(index)] if str(index) in self.gates else self.add(index).to(x.device)
        pooled = x.unflatten(-1, (self.dim // 4, 4)).mean(-1)
        return gate(pooled).squeeze(-1).float()


@dataclass
class GateStats(PairStats):
    """:class:`PairStats` plus what the budget and the logs need (device tensors, no sync).

    Attributes:
        n_in: ``[R]`` real patch tokens of each row before the point (float).
        kept: ``[R]`` real patch tokens kept (float; straight-through: gradient to the gates).
        width_in, width_out: the padded widths before and after (host ints).
        anchor_width: tokens each row was matched against (the teacher's width).
        gate_open: share of the candidate pairs the gates kept.
    """

    n_in: Tensor | None = None
    kept: Tensor | None = None
    width_in: int = 0
    width_out: int = 0
    anchor_width: int = 0
    gate_open: Tensor | None = None


def patch_valid(state: TokenState) -> Tensor:
    """``[R, N]`` bool: which patch slots hold a real token."""
    if state.valid is None:
        return torch.ones(state.ids.shape, dtype=torch.bool, device=state.x.device)
    return state.valid[:, state.num_prefix :]


def masked_match(student: Tensor, teacher: Tensor, s_valid: Tensor,
                 t_valid: Tensor) -> tuple[Tensor, Tensor]:
    """Most similar *real* teacher token of every student token; padded students get ``-inf``.

    Returns ``partner: [R, N]`` and ``sim: [R, N]`` (fp32 cosine).
    """
    s = F.normalize(student.detach().float(), dim=-1)
    t = F.normalize(teacher.detach().float(), dim=-1)
    sims = (s @ t.transpose(1, 2)).masked_fill(~t_valid[:, None, :], float("-inf"))
    sim, partner = sims.max(dim=-1)
    return partner, sim.masked_fill(~s_valid, float("-inf"))


def row_window(sim: Tensor, valid: Tensor, keep_share: float, position: float) -> Tensor:
    """Pairs the window keeps for sure, per row: ranks ``[w_b, w_b + k_b)`` of the row's own real
    pairs, ``k_b = round(share · n_b)`` (at least 1, halves up, as :func:`~simprune.tokens.num_keep`),
    ``w_b = round(p · (n_b − k_b))`` (halves to even, as :func:`window_start`). ``[R, N]`` bool."""
    n = valid.sum(1, keepdim=True).double()
    k = torch.floor(torch.round(keep_share * n, decimals=9) + 0.5).clamp(min=1).minimum(n)
    w = torch.round(position * (n - k))
    order = sim.argsort(dim=1, descending=True, stable=True)
    ar = torch.arange(sim.shape[1], device=sim.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, ar).double()
    return (rank >= w) & (rank < w + k) & valid


def pack(state: TokenState, keep: Tensor, width: int, scale: Tensor | None = None) -> TokenState:
    """Keep the patch slots where ``keep: [R, N]`` holds, in their order, padded to ``width``.

    Padded slots hold zeros, ``ids = -1``, no original patch and ``valid = False``. ``scale``
    (``[R, N]``) multiplies the kept tokens (the straight-through factor, exactly 1 forward).
    """
    r, n = keep.shape
    pos = torch.arange(n, device=keep.device).expand(r, n)
    idx = torch.where(keep, pos, pos + n).argsort(dim=1)[:, :width]
    slot_real = keep.sum(1, keepdim=True) > torch.arange(width, device=keep.device)
    return _place(state, idx, slot_real, scale)


def _place(state: TokenState, idx: Tensor, slot_real: Tensor, scale: Tensor | None) -> TokenState:
    r, n = state.ids.shape
    width = idx.shape[1]
    slots = torch.where(slot_real, torch.arange(width, device=idx.device).expand(r, width), -1)
    old_to_new = torch.full((r, n), -1, dtype=torch.long, device=idx.device).scatter(1, idx, slots)
    out = gather_patches(state, idx, old_to_new=old_to_new)
    factor = slot_real.to(out.x.dtype)
    if scale is not None:
        factor = factor * scale.gather(1, idx).to(out.x.dtype)
    p = state.num_prefix
    x = torch.cat([out.prefix, out.patches * factor.unsqueeze(-1)], dim=1)
    prefix_ok = torch.ones(r, p, dtype=torch.bool, device=idx.device)
    return TokenState(x=x, ids=torch.where(slot_real, out.ids, -1), source=out.source,
                      size=out.size, attn_mask=out.attn_mask, num_prefix=p,
                      valid=torch.cat([prefix_ok, slot_real], dim=1))


def teacher_rows(partner: Tensor, kept: Tensor, pruned: Tensor, attn: Tensor, t_valid: Tensor,
                 count: Tensor) -> tuple[Tensor, Tensor]:
    """SimPrune's teacher rule with a count per row: every partner of a kept pair, then CLS
    attention fills up to ``count[b]``, first among tokens that are no pruned pair's partner.

    Args:
        partner: ``[R, N]``; kept, pruned: ``[R, N]`` real student pairs kept / dropped;
        attn: ``[R, M]`` teacher CLS attention; t_valid: ``[R, M]``; count: ``[R]`` tokens to keep.
    Returns:
        ``order: [R, M]`` teacher positions ranked (kept ones first, in position order, then the
        rest) and ``real: [R, M]`` whether rank ``j`` is kept (``j < count``).
    """
    r, m = attn.shape
    kp = torch.zeros(r, m + 1, dtype=torch.bool, device=attn.device)
    kp.scatter_(1, partner.masked_fill(~kept, m), True)
    pp = torch.zeros(r, m + 1, dtype=torch.bool, device=attn.device)
    pp.scatter_(1, partner.masked_fill(~pruned, m), True)
    tier = torch.where(kp[:, :m], 2, torch.where(pp[:, :m], 0, 1))
    tier = tier.masked_fill(~t_valid, -1).to(torch.int8)
    by_attn = attn.float().argsort(dim=1, descending=True, stable=True)
    by_tier = tier.gather(1, by_attn).argsort(dim=1, descending=True, stable=True)
    ranked = by_attn.gather(1, by_tier)
    real = torch.arange(m, device=attn.device) < count.unsqueeze(1)
    key = torch.where(real, ranked, m + torch.arange(m, device=attn.device))
    return ranked.gather(1, key.argsort(dim=1)), real


@REDUCERS.register("dynamic_simprune")
class DynamicSimPruneReducer(PairReducer):
    """Gated SimPrune under a training-FLOPs budget (see the module docstring).

    Args:
        flops_budget: the training-FLOPs fraction to meet, in the reachable range (checked when a
            framework binds the reducer to its backbone).
        candidates: share of the pairs the gates may drop at each point (the window's first).
        penalty: weight of ``(f − budget)²`` in the loss.
        gumbel: logistic (two-Gumbel) noise on the gate logits while training; tau: its temperature.
        warmup: training progress before which nothing is dropped.
    """

    name = "dynamic_simprune"
    #: takes ``reducer.flops_budget`` (``--flops-budget``) itself: no keep rate is solved for it
    owns_flops_budget = True
    needs: ClassVar[frozenset[str]] = frozenset({"cls_attn"})
    #: keeps a data-dependent number of tokens per row (padded), not exactly K
    exact_count: ClassVar[bool] = False

    def __init__(self, flops_budget: float = 0.78, candidates: float = 0.5, penalty: float = 2.0,
                 gumbel: bool = False, tau: float = 1.0, warmup: float = 0.03) -> None:
        for key, val in (("flops_budget", flops_budget), ("candidates", candidates),
                         ("penalty", penalty), ("tau", tau), ("warmup", warmup)):
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
                raise ValueError(f"dynamic_simprune option {key} must be a number, got {val!r}")
        if not 0.0 < flops_budget < 1.0:
            raise ValueError(f"dynamic_simprune flops_budget must be a fraction of the dense "
                             f"training FLOPs in (0, 1), got {flops_budget!r}")
        if not 0.0 < candidates < 1.0:
            raise ValueError(f"dynamic_simprune candidates must be in (0, 1), got {candidates!r}")
        if penalty < 0 or tau <= 0 or not 0.0 <= warmup < 1.0:
            raise ValueError(f"dynamic_simprune needs penalty >= 0, tau > 0 and warmup in [0, 1), "
                             f"got penalty={penalty!r}, tau={tau!r}, warmup={warmup!r}")
        self.flops_budget = float(flops_budget)
        self.candidates = float(candidates)
        self.penalty = float(penalty)
        self.gumbel = bool(gumbel)
        self.tau = float(tau)
        self.warmup = float(warmup)
        self.gates: GateBank | None = None
        self.cost: ViTCost | None = None

    def __repr__(self) -> str:  # the options only (not the bound gates and cost model)
        opts = ("flops_budget", "candidates", "penalty", "gumbel", "tau", "warmup")
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in opts)})"

    @property
    def keep_share(self) -> float:
        """Share of the pairs the window keeps for sure at each point."""
        return 1.0 - self.candidates

    @property
    def student_needs(self) -> frozenset[str]:
        return frozenset()

    @property
    def teacher_needs(self) -> frozenset[str]:
        return frozenset({"cls_attn"})

    def keep_schedule(self) -> KeepRateSchedule:
        """The plan's keep-rate schedule: 1 (the driver skips every point) before ``warmup``, then
        the window's share (the driver's ``K``, which only switches the points on)."""
        return KeepRateSchedule(self.keep_share, self.warmup, self.warmup)

    def bind(self, backbone) -> GateBank:  # noqa: ANN001 - VisionTransformer
        """Create the gates of every point of ``backbone`` (the framework registers them among
        its trained parameters, so the optimiser and checkpoints see them) and check that the
        budget is reachable. Returns the gate module."""
        self.cost = ViTCost.of(backbone)
        n0 = backbone.num_patches_for(*(backbone.cfg.img_size,) * 2)
        lo, hi = self.cost.fraction_bounds(n0, self.keep_share)
        if not lo <= self.flops_budget < min(1.0, hi):
            raise ValueError(
                f"dynamic_simprune flops_budget {self.flops_budget:g} is out of reach for this "
                f"model ({n0} patch tokens, reduction at blocks {', '.join(map(str, self.cost.reduce_at))}):"
                f" valid: {math.ceil(lo * 1000) / 1000:.3f} (every candidate pair dropped at every "
                f"point) to below {min(1.0, hi):.3f} (dense)")
        self.gates = GateBank(backbone.embed_dim, len(backbone.reduce_at))
        return self.gates

    # --- one point --------------------------------------------------------------------------
    def _gate(self, point: ReductionPoint) -> Tensor:
        """``[R, N]`` fp32 gate scores of the student tokens (noisy while training with gumbel)."""
        if self.gates is None:
            self.gates = GateBank(point.state.x.shape[-1]).to(point.state.x.device)
        logit = self.gates(point.index, point.state.patches)
        if self.gumbel and self.gates.training:
            u = torch.rand_like(logit).clamp(1e-6, 1 - 1e-6)
            logit = logit + torch.log(u) - torch.log1p(-u)
        return torch.sigmoid(logit / self.tau)

    def _decide(self, point: ReductionPoint, partner: Tensor, sim: Tensor, valid: Tensor,
                position: float) -> dict[str, Any]:
        sure = row_window(sim, valid, self.keep_share, position)
        cand = valid & ~sure
        g = self._gate(point)
        hard = g >= 0.5
        ste = hard.float() + g - g.detach()
        keep = sure | (cand & hard)
        count = keep.sum(1)
        width = int(count.max())  # host sync: the padded tensor's size depends on the data
        kept = sure.sum(1).float() + (ste * cand).sum(1)
        scale = torch.where(cand, ste, torch.ones_like(ste))
        n_cand = cand.sum().clamp(min=1)
        return dict(keep=keep, count=count, width=width, kept=kept, scale=scale,
                    gate_open=(cand & hard).sum().float().detach() / n_cand, sure=sure)

    def _stats(self, d: dict[str, Any], partner: Tensor, sim: Tensor, valid: Tensor, m: int,
               position: float, n_in_width: int, anchor_width: int) -> GateStats:
        keep = d["keep"]
        pruned = valid & ~keep
        r = keep.shape[0]
        kp = torch.zeros(r, m + 1, dtype=torch.bool, device=keep.device)
        kp.scatter_(1, partner.masked_fill(~keep, m), True)
        kp = kp[:, :m]
        collide = kp.gather(1, partner) & pruned
        real_sim = sim.masked_fill(~valid, 0.0)
        n_valid = valid.sum().clamp(min=1)
        n_keep = keep.sum().clamp(min=1)
        k = keep.sum(1).clamp(min=1)
        return GateStats(
            position=position,
            start=window_start(n_in_width, max(1, round(self.keep_share * n_in_width)), position),
            sim_mean=(real_sim.sum() / n_valid).detach(),
            sim_kept=((real_sim * keep).sum() / n_keep).detach(),
            many_to_one=(collide.sum().float() / pruned.sum().clamp(min=1).float()).detach(),
            dup_partners=(1.0 - (kp.sum(1).float() / k.float()).mean()).detach(),
            n_in=valid.sum(1).float(), kept=d["kept"], width_in=n_in_width, width_out=d["width"],
            anchor_width=anchor_width, gate_open=d["gate_open"])

    def reduce_pair(
        self, student: ReductionPoint, teacher: ReductionPoint, k: int, position: float
    ) -> tuple[TokenState, TokenState, GateStats]:
        """Reduce a student point and its paired (rolled) teacher point; ``k`` is not read (the
        driver's ``K`` only switches the point on): each row keeps its own count."""
        s_state, t_state = student.state, teacher.state
        check_pair(s_state, t_state)
        s_valid, t_valid = patch_valid(s_state), patch_valid(t_state)
        partner, sim = masked_match(s_state.patches, t_state.patches, s_valid, t_valid)
        d = self._decide(student, partner, sim, s_valid, position)
        s_new = pack(s_state, d["keep"], d["width"], d["scale"])
        attn = cls_attention(teacher).masked_fill(~t_valid, -1.0)
        order, real = teacher_rows(partner, d["keep"], s_valid & ~d["keep"], attn, t_valid,
                                   d["count"])
        t_new = _place(t_state, order[:, : d["width"]], real[:, : d["width"]], None)
        stats = self._stats(d, partner, sim, s_valid, t_state.num_patches, position,
                            s_state.num_patches, t_state.num_patches)
        return s_new, t_new, stats

    def reduce_against(
        self, student: ReductionPoint, teacher_tokens: Tensor, k: int, position: float
    ) -> tuple[TokenState, GateStats]:
        """Local views against the teacher's kept tokens (padded anchors, all zeros, are skipped)."""
        s_state = student.state
        if s_state.x.shape[-1] != teacher_tokens.shape[-1]:
            raise ValueError(f"student tokens have width {s_state.x.shape[-1]}, teacher tokens "
                             f"{teacher_tokens.shape[-1]}; they must be equal")
        s_valid = patch_valid(s_state)
        a_valid = teacher_tokens.detach().abs().amax(-1) > 0
        partner, sim = masked_match(s_state.patches, teacher_tokens, s_valid, a_valid)
        d = self._decide(student, partner, sim, s_valid, position)
        stats = self._stats(d, partner, sim, s_valid, teacher_tokens.shape[1], position,
                            s_state.num_patches, teacher_tokens.shape[1])
        return pack(s_state, d["keep"], d["width"], d["scale"]), stats

    # --- the budget -------------------------------------------------------------------------
    def flops_fractions(self, dual: Any) -> tuple[float, Tensor | float]:
        """``(run, tokens)`` of a :class:`~simprune.drive.DualOutput` (the drivers sit above the
        reducers, so it is not imported here): the step's training-FLOPs fraction as the padded
        batch ran it (a host float: every width is already on the host) and at each row's own
        count (a device tensor with the gates' straight-through gradient; a float when no point
        reduced)."""
        cost = self.cost
        if cost is None:
            raise RuntimeError("dynamic_simprune is not bound to a backbone (bind(backbone)); "
                               "a framework binds it when it is built")
        run, tok, dense = self._branch(cost, dual.points, "student", "stats", True)
        if dual.local is not None:
            r2, t2, d2 = self._branch(cost, dual.points, "local", "local_stats", False)
            run, tok, dense = run + r2, tok + t2, dense + d2
        return run / dense, tok / dense

    @staticmethod
    def _branch(cost: ViTCost, points: list, rec_name: str, stats_name: str,
                pair: bool) -> tuple[float, Tensor | float, float]:
        """Training FLOPs of the student rows (and, for ``pair``, their teacher rows) of one
        branch: ``(run, tokens, dense)``."""
        first = getattr(points[0], rec_name)
        rows, n0 = first.ids.shape[0], first.tokens_in
        mult = TRAIN + 1 if pair else TRAIN  # student fwd + bwd (+ the teacher's forward)
        run_outs: list[Any] = []
        tok_outs: list[Any] = []
        run_work: float = 0.0
        tok_work: Tensor | float = 0.0
        tok_n: Tensor | float = float(n0)
        for pt in points:
            rec, st = getattr(pt, rec_name), getattr(pt, stats_name)
            if isinstance(st, GateStats):
                run_work += rows * cost.point_work(st.width_in, st.anchor_width, pair, True)
                tok_work = tok_work + cost.point_work(st.n_in, st.n_in if pair else st.anchor_width,
                                                      pair, True).sum()
                tok_n = st.kept
            else:
                run_work += rows * cost.point_work(rec.tokens_in, 0, pair, False)
                tok_work = tok_work + rows * cost.point_work(rec.tokens_in, 0, pair, False)
            run_outs.append(rec.tokens_out)
            tok_outs.append(tok_n)
        dense = float(mult * rows * cost.row(n0, [n0] * len(points)))
        run = mult * rows * cost.row(n0, run_outs) + run_work
        tok = cost.row(n0, tok_outs)
        tok = (mult * tok.sum() if isinstance(tok, Tensor) else mult * rows * tok) + tok_work
        return float(run), tok, dense

    def budget_terms(self, dual: Any) -> tuple[Tensor | float, dict[str, Tensor | float]]:
        """``(loss term, logs)`` of a step: ``penalty · (f − budget)²`` with ``f`` the padded
        fraction's value and each row's own count's gradient, and per point the kept-count
        distribution over the student's global rows and the share of candidates kept."""
        run, tok = self.flops_fractions(dual)
        logs: dict[str, Tensor | float] = {"flops": run, "flops_budget": self.flops_budget}
        gated = False
        for i, pt in enumerate(dual.points, start=1):
            st = pt.stats
            if isinstance(st, GateStats):
                gated = True
                kept = st.kept.detach()
                logs[f"kept_mean/p{i}"] = kept.mean()
                logs[f"kept_min/p{i}"] = kept.min()
                logs[f"kept_max/p{i}"] = kept.max()
                logs[f"gate_open/p{i}"] = st.gate_open
        if not gated or not isinstance(tok, Tensor):
            return 0.0, logs
        f = tok - tok.detach() + run
        term = self.penalty * (f - self.flops_budget) ** 2
        logs["flops_tokens"] = tok.detach()
        logs["budget_penalty"] = term.detach()
        return term, logs
