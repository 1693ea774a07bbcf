"""The token sequence that flows through a reducible ViT, and the index bookkeeping around it.

A sequence is ``[prefix tokens (CLS), patch tokens]``. Reducers never touch the prefix; they choose
which patch tokens survive (by position among the *current* patch tokens) and, for merging or
fusing methods, what the survivors' values become. ``TokenState`` carries, next to the values, what
is needed to interpret them later:

- ``ids``: for each current patch token, its index in the original patch grid (``-1`` for a token
  that no original patch owns, such as EViT's fused token). This is what "kept indices" means.
- ``source``: for each *original* patch, the position among current patch tokens that now holds its
  content (``-1`` when dropped). ToMe merge groups and EViT fusion are read from here.
- ``size``: ToMe's per-token size (number of original tokens merged in), ``None`` when all are 1.
- ``attn_mask``: an optional attention-connection mask (Tri-Level E-ViT), ``True`` = may attend.
- ``attn_keys``: the same connections in gathered form (Tri-Level E-ViT's sparse option): for each
  patch query the positions of the keys it may attend to; prefix queries attend to every key.
- ``valid``: which slots hold a real token (``None``: all). A reducer that keeps a different number
  of tokens per sample (``dynamic_simprune``) pads each batch to its largest count; the padded
  slots are masked as keys in attention, carry ``ids == -1`` and own no original patch (``source``),
  so no loss that pools or aligns by ``ids`` reads them.
- ``restore``: what a clustering reducer needs to bring every token back at a later point
  (Expediting ViT's reconstruction, :mod:`simprune.reducers.expedite`); ``None`` otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class TokenState:
    """Values and bookkeeping of one batch of token sequences.

    Attributes:
        x: ``[B, P + N, D]`` token values, ``P`` prefix tokens first.
        ids: ``[B, N]`` original patch index of each patch token, ``-1`` for synthetic tokens.
        source: ``[B, N0]`` current patch position holding each original patch, ``-1`` if dropped.
        size: ``[B, P + N]`` token sizes (float) or ``None`` for all ones.
        attn_mask: ``[B, P + N, P + N]`` bool connection mask or ``None`` for full attention.
        num_prefix: ``P``, the number of prefix tokens (1 for CLS).
        attn_keys: ``[B, N, k]`` int64 positions (in the whole sequence) of the keys each patch
            query may attend to, prefix queries dense; ``None``: no gathered connections. Set only
            by the reducer that recomputes it at every point (``attn_topk``), so a reduction that
            reorders tokens drops it (:func:`gather_patches`, :func:`append_patch`).
        valid: ``[B, P + N]`` bool, ``False`` at padded slots (masked as attention keys), or
            ``None`` when every slot is real.
        restore: opaque data of the reducer that will restore the tokens later (Expediting ViT's
            reconstruction), carried unchanged through the blocks; any other reduction drops it.
    """

    x: Tensor
    ids: Tensor
    source: Tensor
    size: Tensor | None = None
    attn_mask: Tensor | None = None
    num_prefix: int = 1
    attn_keys: Tensor | None = None
    valid: Tensor | None = None
    restore: object | None = None

    @property
    def num_patches(self) -> int:
        """Current number of patch tokens ``N`` (including synthetic ones)."""
        return self.x.shape[1] - self.num_prefix

    @property
    def prefix(self) -> Tensor:
        """``[B, P, D]`` prefix tokens."""
        return self.x[:, : self.num_prefix]

    @property
    def patches(self) -> Tensor:
        """``[B, N, D]`` patch tokens."""
        return self.x[:, self.num_prefix :]

    def with_x(self, x: Tensor) -> TokenState:
        """Same bookkeeping, new values of the same shape."""
        return replace(self, x=x)


def initial_state(x: Tensor, num_prefix: int = 1) -> TokenState:
    """Bookkeeping for an unreduced sequence ``x: [B, P + N0, D]``."""
    b, n_total = x.shape[:2]
    n = n_total - num_prefix
    ids = torch.arange(n, device=x.device).expand(b, n)
    return TokenState(x=x, ids=ids, source=ids, num_prefix=num_prefix)


def invert_keep(keep: Tensor, n: int) -> Tensor:
    """Map old patch positions to new ones after keeping ``keep``.

    Args:
        keep: ``[B, K]`` kept positions (unique) among ``n`` patch tokens, in their new order.
    Returns:
        ``[B, n]`` new position of each old token, ``-1`` where it was dropped.
    """
    b, k = keep.shape
    old_to_new = torch.full((b, n), -1, dtype=torch.long, device=keep.device)
    return old_to_new.scatter(1, keep, torch.arange(k, device=keep.device).expand(b, k))


def _gather_rows(t: Tensor, index: Tensor) -> Tensor:
    """``t: [B, N, *]``, ``index: [B, K]`` -> ``[B, K, *]``.

    One ``index_select`` over the flattened batch: on CPU it is several times faster than
    ``gather`` with an index expanded over the feature dimension, forward and backward.
    """
    b, n = t.shape[:2]
    flat = (index + torch.arange(b, device=index.device).unsqueeze(1) * n).reshape(-1)
    rows = t.reshape(b * n, *t.shape[2:]).index_select(0, flat)
    return rows.reshape(b, index.shape[1], *t.shape[2:])


def gather_patches(
    state: TokenState,
    keep: Tensor,
    x_patches: Tensor | None = None,
    old_to_new: Tensor | None = None,
    size_patches: Tensor | None = None,
) -> TokenState:
    """Keep the patch tokens at positions ``keep`` (prefix always kept, first).

    Args:
        state: the sequence before reduction, ``N`` patch tokens.
        keep: ``[B, K]`` positions among the current patch tokens, unique, in output order.
        x_patches: ``[B, N, D]`` values to gather from instead of ``state.patches`` (merging
            methods pass merged values here).
        old_to_new: ``[B, N]`` where each old token's content went (defaults to the inverse of
            ``keep``: dropped tokens map to ``-1``). Merging and fusing methods map absorbed tokens
            to the survivor that holds them.
        size_patches: ``[B, N]`` new patch sizes to gather from (merging methods), else the old.
    Returns:
        The reduced ``TokenState`` with ``P + K`` tokens.
    """
    p, n = state.num_prefix, state.num_patches
    b = keep.shape[0]
    seq = torch.cat([torch.arange(p, device=keep.device).expand(b, p), keep + p], dim=1)
    src = state.x if x_patches is None else torch.cat([state.prefix, x_patches], dim=1)
    x = _gather_rows(src, seq)  # prefix first, then the kept patches
    if old_to_new is None:
        old_to_new = invert_keep(keep, n)
    source = torch.where(
        state.source >= 0, old_to_new.gather(1, state.source.clamp(min=0)), state.source
    )
    size = None
    if state.size is not None or size_patches is not None:
        full = state.size if state.size is not None else x.new_ones(x.shape[0], p + n)
        sp = full[:, p:] if size_patches is None else size_patches
        size = torch.cat([full[:, :p], sp.gather(1, keep)], dim=1)
    mask = None
    if state.attn_mask is not None:
        rows = _gather_rows(state.attn_mask, seq)
        mask = rows.gather(2, seq.unsqueeze(1).expand(-1, seq.shape[1], -1))
    return TokenState(
        x=x,
        ids=state.ids.gather(1, keep),
        source=source,
        size=size,
        attn_mask=mask,
        num_prefix=p,
        valid=None if state.valid is None else state.valid.gather(1, seq),
    )


def append_patch(state: TokenState, token: Tensor, absorbed: Tensor) -> TokenState:
    """Append one synthetic patch token (EViT's fused token) at the end of the sequence.

    Args:
        state: reduced sequence with ``K`` patch tokens.
        token: ``[B, 1, D]`` the new token's value.
        absorbed: ``[B, N0]`` bool, original patches whose content the new token holds.
    """
    k = state.num_patches
    ids = torch.cat([state.ids, state.ids.new_full((state.ids.shape[0], 1), -1)], dim=1)
    source = torch.where(absorbed, torch.full_like(state.source, k), state.source)
    size = None
    if state.size is not None:
        size = torch.cat([state.size, state.size.new_ones(state.size.shape[0], 1)], dim=1)
    mask = None
    if state.attn_mask is not None:
        b, n, _ = state.attn_mask.shape
        mask = torch.ones(b, n + 1, n + 1, dtype=torch.bool, device=token.device)
        mask[:, :n, :n] = state.attn_mask
    valid = None
    if state.valid is not None:
        valid = torch.cat([state.valid, state.valid.new_ones(state.valid.shape[0], 1)], dim=1)
    return TokenState(
        x=torch.cat([state.x, token], dim=1),
        ids=ids,
        source=source,
        size=size,
        attn_mask=mask,
        num_prefix=state.num_prefix,
        valid=valid,
    )


def num_keep(n: int, keep_rate: float) -> int:
    """``K = round(keep_rate * n)``, at least 1 (METHOD.md). Validates the rate.

    Rounds half up on the decimal product (``0.7 × 45 = 31.5 → 32``), not on its binary float
    approximation (31.4999…) and not half-to-even.
    """
    check_keep_rate(keep_rate)
    return max(1, min(n, math.floor(round(keep_rate * n, 9) + 0.5)))


def check_keep_rate(keep_rate: float, name: str = "keep rate") -> None:
    """Raise ``ValueError`` unless ``0 < keep_rate <= 1``."""
    if isinstance(keep_rate, bool) or not isinstance(keep_rate, (int, float)):
        raise ValueError(f"{name} must be a number in (0, 1], got {type(keep_rate).__name__} "
                         f"{keep_rate!r}")
    if not 0.0 < float(keep_rate) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {keep_rate!r}")
