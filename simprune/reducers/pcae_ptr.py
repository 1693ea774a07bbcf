"""``pcae_ptr``: PCAE's downstream progressive token reduction (paper section 3.4, never released).

At each reduction point the patch tokens most cosine-similar to the mean token are dropped (the
``mean_sim`` score, ``paper`` or ``normalized``), and **the mean of the dropped tokens** is appended
as one synthetic token (original id ``-1``), which the attention still sees but which a classifier
that pools patch tokens leaves out (``supervised.pool = "mean"`` averages only tokens with an
original id; the CLS pool never reads patch tokens). The paper: "we append the average of
discarded tokens to the retained tokens ... we remove these appended tokens before final global
pooling".

At a later point an appended token is an ordinary candidate (as EViT's fused token is): when it is
dropped, what it held goes into the new appended token. So that the appended token stays "the
mean of the discarded patches", the mean weights each dropped token by the original patches it
holds (1 for a real patch, the number it averaged for an earlier appended token; read from the
state's ``source``).

Its points sit **after** their blocks (placement ``block``: the paper reduces "after the 0th, 7th
and 10th layer", 0-indexed), so each block's MLP still runs on every token, as in PCAE's teacher.

Token counts: ``k = round(keep_rate · N)`` patches are kept, as every reducer here counts, and the
appended mean is one token more (ViT-B at 0.6: 196 → 118 + 1); the paper truncates and counts the
appended token among the kept (196 → 117 + 1 in its description of dropping "up to 40%").

METHOD.md's recipe for fine-tuning: points at blocks 1, 8 and 11, keep rate 0.6 (drop up to 40%),
no dropping for the first 10% of training, then a linear ramp to the target over the next 25%:
``[reducer] method = "pcae_ptr"``, ``reduce_at = [1, 8, 11]``, ``keep_rate = 0.6``,
``keep_warmup = [0.1, 0.35]``, ``keep_ramp = "linear"``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from simprune.models.vit import ReductionPoint
from simprune.reducers.base import REDUCERS, TokenReducer
from simprune.reducers.mean_sim import SCORES, mean_sim_keep
from simprune.tokens import TokenState, append_patch, gather_patches


def held_counts(state: TokenState) -> Tensor:
    """``[B, N]`` original patches each current patch token holds (at least 1 per token)."""
    b, n = state.x.shape[0], state.num_patches
    src = state.source
    counts = torch.zeros(b, n, dtype=torch.float32, device=src.device)
    counts.scatter_add_(1, src.clamp(min=0), (src >= 0).float())
    return counts.clamp_min(1.0)


def mean_of_dropped(x: Tensor, weights: Tensor, keep: Tensor) -> Tensor:
    """``[B, 1, D]`` weighted mean of the tokens of ``x: [B, N, D]`` not in ``keep: [B, K]``."""
    w = weights.scatter(1, keep, 0.0)  # zero the kept ones
    total = w.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return ((w / total).to(x.dtype).unsqueeze(-1) * x).sum(dim=1, keepdim=True)


@REDUCERS.register("pcae_ptr")
class PCAEPTRReducer(TokenReducer):
    """Keep the K patches least like the mean; append the mean of the dropped ones."""

    name = "pcae_ptr"
    adds_tokens = 1
    placement = "block"

    def __init__(self, score: str = "paper") -> None:
        if score not in SCORES:
            raise ValueError(f"unknown pcae_ptr score {score!r}; valid: {', '.join(SCORES)}")
        self.score = score

    def __call__(self, point: ReductionPoint, k: int) -> TokenState:
        s = point.state
        keep = mean_sim_keep(s.patches.detach(), k, self.score)
        kept = gather_patches(s, keep)
        mean = mean_of_dropped(s.patches, held_counts(s), keep)
        absorbed = (kept.source < 0) & (s.source >= 0)
        return append_patch(kept, mean, absorbed)
