"""``tome`` (Bolya et al., 2023): bipartite soft matching merges similar tokens instead of dropping.

Patch tokens alternate into sets A (even positions) and B (odd). Each A token finds its most similar
B token by cosine similarity of the keys averaged over heads; the ``r`` best-scoring A tokens merge
into their B partners by a size-weighted average, and sizes add. The CLS token never merges. To go
from N to K tokens, ``r = N − K`` merges are made, in several rounds when ``r`` exceeds |A|.
Later blocks add ``log(size)`` to the attention logits (proportional attention, done by the
backbone from ``TokenState.size``). Survivors keep their original order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from simprune.models.vit import ReductionPoint
from simprune.reducers.base import REDUCERS, TokenReducer
from simprune.tokens import TokenState, gather_patches, invert_keep


def bipartite_plan(metric: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """One round of bipartite soft matching.

    Args:
        metric: ``[B, N, d]`` matching features (keys), ``N >= 2``; r: merges, ``r <= ceil(N/2)``.
    Returns:
        ``dst: [B, N]`` the position each token's content goes to (itself for survivors) and
        ``keep: [B, N - r]`` surviving positions in original order.
    """
    b, n, _ = metric.shape
    m = F.normalize(metric.float(), dim=-1)
    a_pos = torch.arange(0, n, 2, device=metric.device)
    b_pos = torch.arange(1, n, 2, device=metric.device)
    scores = m[:, a_pos] @ m[:, b_pos].transpose(1, 2)  # [B, |A|, |B|]
    best, partner = scores.max(dim=-1)  # [B, |A|]
    merged = best.argsort(dim=-1, descending=True, stable=True)[:, :r]  # A-local indices
    dst = torch.arange(n, device=metric.device).expand(b, n).clone()
    dst.scatter_(1, a_pos[merged], b_pos[partner.gather(1, merged)])
    survives = torch.ones(b, n, dtype=torch.bool, device=metric.device)
    survives.scatter_(1, a_pos[merged], False)
    keep = (~survives).to(torch.int8).sort(dim=1, stable=True).indices[:, : n - r]
    return dst, keep


def merge_by(dst: Tensor, values: Tensor, size: Tensor) -> Tensor:
    """Size-weighted average of ``values: [B, N, D]`` into positions ``dst: [B, N]``.

    Positions that receive nothing are 0. ``size: [B, N]``.
    """
    w = size.to(values.dtype).unsqueeze(-1)
    idx = dst.unsqueeze(-1).expand_as(values)
    sums = torch.zeros_like(values).scatter_add(1, idx, values * w)
    total = torch.zeros_like(size).scatter_add(1, dst, size)
    return sums / total.clamp(min=1.0).to(values.dtype).unsqueeze(-1)


def tome_reduce(state: TokenState, metric: Tensor, k: int) -> TokenState:
    """Merge ``state``'s patch tokens down to ``k`` with matching features ``metric: [B, N, d]``."""
    p = state.num_prefix
    while state.num_patches > k:
        n = state.num_patches
        r = min(n - k, (n + 1) // 2)
        size = state.size[:, p:] if state.size is not None else state.x.new_ones(
            state.x.shape[0], n, dtype=torch.float32)
        dst, keep = bipartite_plan(metric, r)
        total = torch.zeros_like(size).scatter_add(1, dst, size)
        old_to_new = invert_keep(keep, n).gather(1, dst)
        if state.size is None:
            state = TokenState(state.x, state.ids, state.source,
                               torch.cat([size.new_ones(size.shape[0], p), size], 1),
                               state.attn_mask, p)
        merged_x = merge_by(dst, state.patches, size)
        metric = merge_by(dst, metric.float(), size).gather(
            1, keep.unsqueeze(-1).expand(-1, -1, metric.shape[-1]))
        state = gather_patches(state, keep, x_patches=merged_x, old_to_new=old_to_new,
                               size_patches=total)
    return state


@REDUCERS.register("tome")
class ToMeReducer(TokenReducer):
    """Token merging on head-averaged keys; sizes drive proportional attention later."""

    name = "tome"
    needs = frozenset({"qk"})

    def __call__(self, point: ReductionPoint, k: int) -> TokenState:
        if point.extras.k is None:
            raise RuntimeError("tome needs the keys; run the backbone with need={'qk'}")
        keys = point.extras.k.detach().mean(dim=1)[:, point.state.num_prefix :]  # [B, N, hd]
        return tome_reduce(point.state, keys, k)
