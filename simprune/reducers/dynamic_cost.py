"""Training-FLOPs fraction of a lock-step step from its token counts (Dynamic SimPrune's budget).

Dynamic SimPrune (:mod:`simprune.reducers.dynamic`) trains its gates against a budget of training
FLOPs, so it needs, at every step and on the device, the fraction of the dense step's FLOPs that
the batch it just ran cost. This module computes it analytically from the patch tokens each row
kept at each point, counting what :mod:`simprune.bench.flops` counts (matrix products only, a
multiply-add = 2 FLOPs; :mod:`torch.utils.flop_counter`):

- per block on ``n`` tokens (prefix included), width ``D``, MLP hidden ``H``: the attention half
  ``8·n·D² + 4·n²·D`` (q, k, v and the output projection; ``q·kᵀ`` and ``attn·v``), the MLP half
  ``4·n·D·H``; at a reduction point the block's attention runs on the tokens that arrive, its MLP
  on those kept;
- the student's rows forward and backward (``3×``), the teacher's rows forward (``1×``), the
  student's local views (``3×``);
- the reducer's own work: the teacher's CLS-attention row (``2·n·D`` per row and point), the
  matching (``2·N·M·D`` per pair row), the gates (``2·D/4`` per student token, ``3×``).

Patch embedding, heads and loss do not depend on the token counts and are left out of both sides of
the fraction (on the CPU recipe they are about 2% of the step, so ``bench flops``' whole-step ratio
is that much closer to 1). Two figures come out: ``run``, what the padded batch computes (every
row at the batch's largest count: what ``bench flops`` counts and what the step costs), and
``tokens``, what each row's own count would cost (a differentiable device tensor when the counts
are; the gates' gradient flows through it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

Count = Tensor | float | int

#: training multiplier of a forward with a backward (backward = 2 × forward, METHOD.md)
TRAIN = 3


@dataclass(frozen=True)
class ViTCost:
    """Geometry of a ViT that its per-token FLOPs depend on.

    Attributes:
        dim: width ``D``; hidden: MLP hidden width ``H``; depth: blocks;
        reduce_at: 1-indexed reduction blocks (0: before block 1); prefix: prefix tokens (CLS);
        after_block: the points follow the whole block (placement ``block``), not its attention.
    """

    dim: int
    hidden: int
    depth: int
    reduce_at: tuple[int, ...]
    prefix: int = 1
    after_block: bool = False

    @classmethod
    def of(cls, backbone) -> ViTCost:  # noqa: ANN001 - VisionTransformer
        """The geometry of a :class:`~simprune.models.vit.VisionTransformer`."""
        return cls(backbone.embed_dim, backbone.blocks[0].mlp.fc1.out_features, backbone.depth,
                   tuple(backbone.reduce_at), backbone.num_prefix_tokens,
                   getattr(backbone, "placement", "attention") == "block")

    def attention(self, n: Count) -> Count:
        """Forward FLOPs of a block's attention half on ``n`` tokens (prefix included)."""
        return 8 * n * self.dim ** 2 + 4 * n * n * self.dim

    def mlp(self, n: Count) -> Count:
        """Forward FLOPs of a block's MLP half on ``n`` tokens."""
        return 4 * n * self.dim * self.hidden

    def row(self, n0: Count, outs: Sequence[Count]) -> Count:
        """Forward FLOPs of one row through every block.

        Args:
            n0: patch tokens entering the first block; outs: patch tokens after each reduction
                point (one per ``reduce_at``; floats, ints or ``[R]`` tensors).
        """
        if len(outs) != len(self.reduce_at):
            raise ValueError(f"got {len(outs)} counts for {len(self.reduce_at)} reduction points")
        after = dict(zip(self.reduce_at, outs))
        n = after.get(0, n0)
        total: Count = 0
        for block in range(1, self.depth + 1):
            if block in after:
                mlp_n = n if self.after_block else after[block]
                total = total + self.attention(self.prefix + n) + self.mlp(self.prefix + mlp_n)
                n = after[block]
            else:
                total = total + self.attention(self.prefix + n) + self.mlp(self.prefix + n)
        return total

    def point_work(self, n_in: Count, n_anchor: Count, teacher_row: bool, gated: bool) -> Count:
        """The reducer's FLOPs at one point for one pair row (``teacher_row``: the teacher's CLS
        attention row too) or one local row: matching ``2·n·M·D`` and gates ``3 · 2·(D/4)·n`` when
        the point reduced (``gated``)."""
        work: Count = 2 * (self.prefix + n_in) * self.dim if teacher_row else 0
        if gated:
            work = work + 2 * n_in * n_anchor * self.dim + TRAIN * 2 * (self.dim // 4) * n_in
        return work

    def fraction_bounds(self, n0: int, keep_share: float) -> tuple[float, float]:
        """The fraction when every row keeps only the window's share at every point (the
        fewest tokens) and when it keeps every token (gates and matching still run), for pair
        rows of ``n0`` patch tokens."""
        from simprune.tokens import num_keep

        dense = (TRAIN + 1) * self.row(n0, [n0] * len(self.reduce_at))
        fewest, n = [], n0
        for _ in self.reduce_at:
            n_next = num_keep(n, keep_share)
            fewest.append(n_next)
            n = n_next
        lo_work = hi_work = 0.0
        n_lo = n0
        for k in fewest:
            lo_work += self.point_work(n_lo, n_lo, True, True)
            hi_work += self.point_work(n0, n0, True, True)
            n_lo = k
        lo = ((TRAIN + 1) * self.row(n0, fewest) + lo_work) / dense
        hi = ((TRAIN + 1) * self.row(n0, [n0] * len(self.reduce_at)) + hi_work) / dense
        return float(lo), float(hi)
