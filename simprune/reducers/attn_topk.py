"""``attn_topk``: Tri-Level E-ViT's token & attention-connection selector (TA-selector).

Token level: keep the K patches with the highest CLS attention (no fusion). Attention level
(optional, ``attn_keep`` = R_A < 1): among the kept tokens, each patch query may attend only to
``ceil(R_A · (P + K))`` keys: the ``P`` prefix keys (CLS, always) and the patch keys it attends to
most at this block (head-averaged softmax over the kept tokens, ranked among the patch keys). The
CLS row and column stay dense. The connections apply in every later block and are recomputed at
each later point, from that block's unmasked ``q·kᵀ`` over the tokens it keeps (the reference ranks
the masked attention instead, where keys masked before all tie at zero; see docs/method.md).

``attn_form`` says how later blocks apply the connections: ``masked`` (the reference's form: dense
attention under a ``-inf`` mask, so it saves no compute) or ``sparse`` (each patch query gathers
its keys: ``O(n·k)`` work, :func:`simprune.models.layers.gathered_attention`). Both compute the
same attention.

With ``k == N`` (token keep 1, Tri-Level's attention level alone) the tokens stay as they are and
only the connections are chosen; the one-branch driver skips such a point, the ``trilevel``
framework's driver does not.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from simprune.models.vit import ReductionPoint
from simprune.reducers.base import REDUCERS, TokenReducer
from simprune.reducers.evit import cls_attention, topk_keep
from simprune.tokens import TokenState, check_keep_rate, gather_patches

FORMS = ("masked", "sparse")


def keys_per_row(attn_keep: float, tokens: int) -> int:
    """Keys a patch query keeps among ``tokens`` kept tokens (prefix included): ``ceil(R_A·tokens)``,
    at least 1. Rounds the decimal product (``0.3 × 10`` is 3, not 4)."""
    return max(1, math.ceil(round(attn_keep * tokens, 9)))


def top_mask(scores: Tensor, k: int) -> Tensor:
    """``scores: [..., N]`` -> bool ``[..., N]`` with exactly ``k`` ``True`` per row: the ``k``
    highest, equal scores at the cut taken lowest position first (the set a stable descending sort
    keeps, :func:`~simprune.reducers.evit.top_positions`), without sorting: one ``topk`` for the
    k-th value, then a running count of the ties."""
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    kth = scores.topk(k, dim=-1).values[..., -1:]
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(-1, keepdim=True)
    return above | (tied & (tied.cumsum(-1) <= room))


def connection_choice(q: Tensor, k: Tensor, seq: Tensor | None, keys: int, prefix: int) -> Tensor:
    """Which keys each patch query keeps among the kept tokens: the prefix, and its
    ``keys - prefix`` strongest patch keys by the head-averaged softmax over the kept tokens.

    Equal attention weights rank the lowest key position first, so ties at the cut keep the lowest.
    No sort and no host sync (:func:`top_mask`).

    Args:
        q, k: ``[B, H, n, hd]`` queries and keys at the point; seq: ``[B, m]`` kept positions in
            the full sequence (prefix first), or ``None`` when every token is kept;
            keys: keys per patch row (``>= prefix``).
    Returns:
        ``[B, m - prefix, m]`` bool, exactly ``max(keys, prefix)`` ``True`` per row.
    """
    if seq is None:  # nothing dropped: no gather
        qs, ks = q[:, :, prefix:].float(), k.float()
    else:
        idx = seq[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[3])
        qs, ks = q.gather(2, idx[:, :, prefix:]).float(), k.gather(2, idx).float()
    attn = ((qs @ ks.transpose(-2, -1)) / math.sqrt(q.shape[-1])).softmax(-1).mean(1)  # [B,m-P,m]
    b, rows, _ = attn.shape
    chosen = top_mask(attn[..., prefix:], max(0, keys - prefix))
    return torch.cat([chosen.new_ones(b, rows, prefix), chosen], dim=-1)


def choice_to_keys(chosen: Tensor, keys: int) -> Tensor:
    """``[B, r, m]`` bool with ``keys`` ``True`` per row -> ``[B, r, keys]`` their positions,
    ascending (a ``topk`` on ``m - position``: no host sync)."""
    m = chosen.shape[-1]
    rank = chosen.float() * (m - torch.arange(m, device=chosen.device, dtype=torch.float32))
    return rank.topk(keys, dim=-1).indices


def connection_keys(q: Tensor, k: Tensor, seq: Tensor | None, keys: int, prefix: int) -> Tensor:
    """:func:`connection_choice` as ``[B, m - prefix, max(keys, prefix)]`` key positions among
    the ``m`` kept tokens, ascending (the prefix first)."""
    return choice_to_keys(connection_choice(q, k, seq, keys, prefix), max(keys, prefix))


def keys_to_mask(keys: Tensor, m: int) -> Tensor:
    """``[B, m - P, k]`` key positions -> ``[B, m, m]`` bool mask (prefix rows all ``True``)."""
    b, rows, _ = keys.shape
    mask = torch.zeros(b, m, m, dtype=torch.bool, device=keys.device)
    mask[:, : m - rows] = True
    mask[:, m - rows :].scatter_(-1, keys, True)
    return mask


def choice_to_mask(chosen: Tensor) -> Tensor:
    """``[B, m - P, m]`` patch rows -> ``[B, m, m]`` bool mask (prefix rows all ``True``)."""
    b, rows, m = chosen.shape
    return torch.cat([chosen.new_ones(b, m - rows, m), chosen], dim=1)


def connection_mask(q: Tensor, k: Tensor, seq: Tensor | None, keys: int, prefix: int) -> Tensor:
    """:func:`connection_choice` as a ``[B, m, m]`` bool mask, ``True`` = may attend; prefix rows
    and columns are all ``True``, every patch row has exactly ``max(keys, prefix)`` ``True``."""
    return choice_to_mask(connection_choice(q, k, seq, keys, prefix))


@REDUCERS.register("attn_topk")
class AttnTopKReducer(TokenReducer):
    """CLS-attention top-K, optionally with the attention-connection selector."""

    name = "attn_topk"
    needs = frozenset({"cls_attn", "qk"})

    def __init__(self, attn_keep: float = 1.0, attn_form: str = "masked") -> None:
        check_keep_rate(attn_keep, "attn_keep (R_A)")
        if attn_form not in FORMS:
            raise ValueError(f"attn_form must be one of {', '.join(FORMS)}, got {attn_form!r}")
        self.attn_keep = attn_keep
        self.attn_form = attn_form

    def with_attn_keep(self, attn_keep: float) -> AttnTopKReducer:
        """The same selector at another R_A (the warm-up's value at a step)."""
        return AttnTopKReducer(attn_keep, self.attn_form)

    def __call__(self, point: ReductionPoint, k: int) -> TokenState:
        s = point.state
        p = s.num_prefix
        seq = None
        if k >= s.num_patches:  # tokens unchanged; connections only
            out = replace(s, attn_mask=None, attn_keys=None)
        else:
            keep = topk_keep(cls_attention(point), k)
            out = gather_patches(s, keep)
            seq = torch.cat([torch.arange(p, device=keep.device).expand(keep.shape[0], p),
                             keep + p], dim=1)
        if self.attn_keep >= 1.0:
            return replace(out, attn_mask=None, attn_keys=None)
        m = out.x.shape[1]
        keys = keys_per_row(self.attn_keep, m)
        chosen = connection_choice(point.extras.q.detach(), point.extras.k.detach(), seq, keys, p)
        # recomputed here, replacing an earlier point's connections
        if self.attn_form == "sparse":
            return replace(out, attn_mask=None, attn_keys=choice_to_keys(chosen, max(keys, p)))
        return replace(out, attn_mask=choice_to_mask(chosen), attn_keys=None)
