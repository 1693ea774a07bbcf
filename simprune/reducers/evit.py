"""``evit`` and ``evit_nofuse`` (Liang et al., 2022): keep the patches the CLS token attends to.

Score = the CLS token's post-softmax attention, averaged over heads. The top K patches are kept (in
their original order); ``evit`` fuses all the others into one token ``Σ a_i x_i`` with the raw
attention weights ``a_i`` (not renormalised), appended after the kept tokens. At later points the
fused token is an ordinary token. ``evit_nofuse`` drops without fusing ("attention-based pruning").
"""

from __future__ import annotations

from torch import Tensor

from simprune.models.vit import ReductionPoint
from simprune.reducers.base import REDUCERS, TokenReducer
from simprune.tokens import TokenState, append_patch, gather_patches


def top_positions(scores: Tensor, k: int) -> Tensor:
    """``scores: [..., N]`` -> ``[..., K]`` positions of the K highest along the last dimension.

    Highest first; equal scores rank lowest position first (a stable sort: ``torch.topk`` promises
    no order among ties, so which of two equal tokens survived could differ between devices).
    """
    return scores.argsort(dim=-1, descending=True, stable=True)[..., :k]


def topk_keep(scores: Tensor, k: int) -> Tensor:
    """``scores: [B, N]`` -> ``[B, K]`` positions of the K highest, in original order.

    Ties at the cut keep the lowest positions (:func:`top_positions`).
    """
    return top_positions(scores, k).sort(dim=1).values


def fuse_dropped(x: Tensor, attn: Tensor, keep: Tensor) -> Tensor:
    """EViT's fused token ``Σ_{i dropped} a_i x_i``.

    Args:
        x: ``[B, N, D]`` patch tokens; attn: ``[B, N]`` CLS attention; keep: ``[B, K]``.
    Returns:
        ``[B, 1, D]``.
    """
    weights = attn.to(x.dtype).scatter(1, keep, 0.0)  # zero the kept ones
    return (weights.unsqueeze(-1) * x).sum(dim=1, keepdim=True)


def cls_attention(point: ReductionPoint) -> Tensor:
    """``[B, N]`` CLS attention over the patch tokens of a point."""
    attn = point.extras.cls_attn
    if attn is None:
        raise RuntimeError("this reducer needs the CLS attention; run the backbone with "
                           "need={'cls_attn'}")
    return attn[:, point.state.num_prefix :]


@REDUCERS.register("evit")
class EViTReducer(TokenReducer):
    """Top-K by CLS attention, the rest fused into one appended token."""

    name = "evit"
    needs = frozenset({"cls_attn"})
    adds_tokens = 1

    def __call__(self, point: ReductionPoint, k: int) -> TokenState:
        s = point.state
        attn = cls_attention(point)
        keep = topk_keep(attn, k)
        kept = gather_patches(s, keep)
        absorbed = (kept.source < 0) & (s.source >= 0)
        return append_patch(kept, fuse_dropped(s.patches, attn, keep), absorbed)


@REDUCERS.register("evit_nofuse")
class EViTNoFuseReducer(TokenReducer):
    """Top-K by CLS attention, the rest dropped (attention-based pruning)."""

    name = "evit_nofuse"
    needs = frozenset({"cls_attn"})

    def __call__(self, point: ReductionPoint, k: int) -> TokenState:
        return gather_patches(point.state, topk_keep(cls_attention(point), k))
