"""``attn_topk``: Tri-Level E-ViT's token & attention-connection selector (TA-selector).

Token level: keep the K patches with the highest CLS attention (no fusion). Attention level
(optional, ``attn_keep`` = R_A < 1): among the kept tokens, each patch token may attend only to the
``ceil(R_A · (P + K))`` keys it attends to most at this block (head-averaged attention restricted to
the kept tokens); the CLS row stays dense. The mask applies in every later block and is
recomputed at each later point.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from simprune.models.vit import ReductionPoint
from simprune.reducers.base import REDUCERS, TokenReducer
from simprune.reducers.evit import cls_attention, top_positions, topk_keep
from simprune.tokens import TokenState, check_keep_rate, gather_patches


def connection_mask(q: Tensor, k: Tensor, seq: Tensor, keys_per_row: int, prefix: int) -> Tensor:
    """Top-``keys_per_row`` attention connections among the kept tokens.

    Equal attention weights rank lowest key position first, so ties at the cut keep the lowest.

    Args:
        q, k: ``[B, H, n, hd]`` queries and keys at the point; seq: ``[B, m]`` kept positions in
            the full sequence (prefix first).
    Returns:
        ``[B, m, m]`` bool mask, ``True`` = may attend; prefix rows are all ``True``.
    """
    idx = seq[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[3])
    qs, ks = q.gather(2, idx).float(), k.gather(2, idx).float()
    attn = ((qs @ ks.transpose(-2, -1)) / math.sqrt(q.shape[-1])).softmax(-1).mean(1)  # [B,m,m]
    top = top_positions(attn, keys_per_row)
    mask = torch.zeros_like(attn, dtype=torch.bool).scatter(-1, top, True)
    mask[:, :prefix] = True
    return mask


@REDUCERS.register("attn_topk")
class AttnTopKReducer(TokenReducer):
    """CLS-attention top-K, optionally with the attention-connection selector."""

    name = "attn_topk"
    needs = frozenset({"cls_attn", "qk"})

    def __init__(self, attn_keep: float = 1.0) -> None:
        check_keep_rate(attn_keep, "attn_keep (R_A)")
        self.attn_keep = attn_keep

    def __call__(self, point: ReductionPoint, k: int) -> TokenState:
        s = point.state
        keep = topk_keep(cls_attention(point), k)
        out = gather_patches(s, keep)
        if self.attn_keep < 1.0:
            p = s.num_prefix
            seq = torch.cat([torch.arange(p, device=keep.device).expand(keep.shape[0], p),
                             keep + p], dim=1)
            m = seq.shape[1]
            mask = connection_mask(point.extras.q.detach(), point.extras.k.detach(), seq,
                                   max(1, math.ceil(self.attn_keep * m)), p)
            out.attn_mask = mask  # recomputed here, replacing an earlier point's mask
        return out
