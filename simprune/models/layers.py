"""ViT building blocks with timm-compatible parameter names and token-reduction hooks.

Parameter names match timm's ``VisionTransformer`` (``attn.qkv``, ``attn.proj``, ``mlp.fc1`` ...)
so DeiT/ViT weights load by name. A block is split in two halves, :meth:`Block.attend` and
:meth:`Block.feed_forward`, because reduction happens between them: after the attention residual
(whose CLS row the reducers may read) and before the MLP, which then runs on fewer tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simprune.tokens import TokenState


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples of a residual branch ``x: [B, ...]`` with prob ``p``."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


@dataclass
class AttentionExtras:
    """What a reducer may read from a block's attention, computed only on request.

    Attributes:
        cls_attn: ``[B, n]`` post-softmax attention of the CLS query over all ``n`` tokens,
            averaged over heads (EViT's score).
        q: ``[B, H, n, hd]`` queries, and ``k``: ``[B, H, n, hd]`` keys (ToMe's metric, the
            attention-connection selector).
    """

    cls_attn: Tensor | None = None
    q: Tensor | None = None
    k: Tensor | None = None


def attention_bias(
    size: Tensor | None, mask: Tensor | None, dtype: torch.dtype, valid: Tensor | None = None
) -> Tensor | None:
    """Additive attention bias ``[B, 1, n|1, n]`` from token sizes, a connection mask and padding.

    ToMe's proportional attention adds ``log(size)`` to every logit of a key; a connection mask
    (``[B, n, n]``, ``True`` = may attend) adds ``-inf`` where a query may not attend; ``valid``
    (``[B, n]``, ``False`` at padded slots) adds ``-inf`` to every logit of a padded key, so a
    padded slot never changes a real token (its query row still sees the real keys: no NaN).
    """
    bias = None
    if size is not None:
        bias = size.log().to(dtype)[:, None, None, :]
    if mask is not None:
        masked = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        masked = masked.masked_fill(~mask, float("-inf"))[:, None]
        bias = masked if bias is None else bias + masked
    if valid is not None:
        pad = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
        pad = pad.masked_fill(~valid, float("-inf"))[:, None, None, :]
        bias = pad if bias is None else bias + pad
    return bias


def gathered_attention(q: Tensor, k: Tensor, v: Tensor, keys: Tensor, prefix: int) -> Tensor:
    """Attention in which patch query ``i`` attends only to the keys ``keys[:, i]`` (gathered, so
    the work is ``O(n·k)`` instead of ``O(n²)``); the ``prefix`` queries attend to every key.

    Equal to dense attention under the mask that allows exactly those keys.

    Args:
        q, k, v: ``[B, H, n, hd]``; keys: ``[B, n - prefix, k]`` key positions in ``0..n-1``.
    Returns:
        ``[B, H, n, hd]``.
    """
    b, h, n, hd = q.shape
    m = keys.shape[-1]
    head = F.scaled_dot_product_attention(q[:, :, :prefix], k, v)  # dense prefix rows
    flat = (keys + torch.arange(b, device=keys.device).view(b, 1, 1) * n).reshape(-1)

    def rows(t: Tensor) -> Tensor:  # [B, H, n, hd] -> [B, H, n - prefix, m, hd]
        picked = t.transpose(1, 2).reshape(b * n, h * hd).index_select(0, flat)
        return picked.view(b, n - prefix, m, h, hd).permute(0, 3, 1, 2, 4)

    kg, vg = rows(k), rows(v)
    logits = (q[:, :, prefix:].unsqueeze(-2) @ kg.transpose(-2, -1)).squeeze(-2) / math.sqrt(hd)
    attn = logits.softmax(dim=-1)  # [B, H, n - prefix, m]
    rest = (attn.unsqueeze(-2) @ vg).squeeze(-2)
    return torch.cat([head, rest], dim=2)


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: Tensor,
        size: Tensor | None = None,
        mask: Tensor | None = None,
        need: frozenset[str] = frozenset(),
        keys: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, AttentionExtras]:
        """``x: [B, n, D]`` -> ``([B, n, D], extras)``; ``need`` ⊆ {"cls_attn", "qk"}.

        ``size: [B, n]`` token sizes (proportional attention), ``mask: [B, n, n]`` connections,
        ``keys: [B, n - 1, k]`` the same kind of connections in gathered form (CLS query dense;
        :func:`gathered_attention`), not combined with ``size`` or ``mask``; ``valid: [B, n]``
        ``False`` at padded slots, masked as keys.
        """
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, n, hd]
        bias = attention_bias(size, mask, q.dtype, valid)
        if keys is not None:
            if bias is not None:
                raise ValueError("gathered attention connections (keys) cannot be combined with token "
                                 "sizes or a connection mask")
            out = gathered_attention(q, k, v, keys, n - keys.shape[1])
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.proj(out.transpose(1, 2).reshape(b, n, d))
        extras = AttentionExtras()
        if "cls_attn" in need:
            # Only the CLS query's row: O(n·D), never the full n×n map.
            logits = (q[:, :, :1] @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if bias is not None:
                logits = logits + bias[:, :, :1]
            extras.cls_attn = logits.float().softmax(dim=-1).mean(dim=1)[:, 0]  # [B, n]
        if "qk" in need:
            extras.q, extras.k = q, k
        return out, extras


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block, callable in two halves around a reduction point."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def attend(
        self, state: TokenState, need: frozenset[str] = frozenset()
    ) -> tuple[TokenState, AttentionExtras]:
        """Attention half with its residual."""
        out, extras = self.attn(self.norm1(state.x), state.size, state.attn_mask, need,
                                state.attn_keys, state.valid)
        return state.with_x(state.x + drop_path(out, self.drop_path, self.training)), extras

    def feed_forward(self, state: TokenState) -> TokenState:
        """MLP half with its residual."""
        out = self.mlp(self.norm2(state.x))
        return state.with_x(state.x + drop_path(out, self.drop_path, self.training))

    def forward(self, state: TokenState) -> TokenState:
        return self.feed_forward(self.attend(state)[0])


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided convolution (``patch_embed.proj``)."""

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``images: [B, C, H, W]`` -> ``([B, (H/p)(W/p), D], (H/p, W/p))``."""
        _, c, h, w = images.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the patch size {self.patch_size}; "
                f"use a multiple of {self.patch_size}"
            )
        if c != self.proj.in_channels:
            raise ValueError(f"images have {c} channels, the model expects {self.proj.in_channels}")
        x = self.proj(images)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])
