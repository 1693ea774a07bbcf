"""``mctf`` (Lee et al., CVPR 2024): multi-criteria token fusion, a one-branch baseline.

At a point, ``r = N − K`` patch tokens are fused by bipartite matching on a product of three
criteria between the tokens of set A and set B (``../shared/docs/METHOD.md``, "MCTF";
``ANCHORS.md`` section 8 for the reference's details):

- similarity ``W_sim = ((cos(x_a, x_b) + 1) / 2) ** (1/τ_sim)`` on the tokens themselves (the
  reference's metric is the token, not the keys as in ToMe);
- informativeness ``W_info = (I_a · I_b) ** (1/τ_info)``, ``I = 1 / (attention the token receives,
  averaged over heads and all queries)``, divided by its per-image maximum: tokens that little
  attention goes to are fused first;
- size ``W_size = (1/s_a · 1/s_b) ** (1/τ_size)``, divided by its per-image maximum: big tokens
  resist further fusion.

``τ = (1, 20, 40)``, i.e. exponents ``(1, 1/20, 1/40)`` (the reference code's values; its paper
prints the reciprocals). The split alternates over the whole sequence with CLS at index 0 in A, as
in the reference: among the patch tokens A holds positions 1, 3, 5, … and B positions 0, 2, 4, …;
CLS never fuses and is never a destination.

Bidirectional matching: ``r1 = r // 2`` A tokens, those whose best B partner scores highest, fuse
into it; then ``r2 = r − r1`` B tokens fuse into their best *unfused* A token, on the same score
matrix restricted to those A tokens (not recomputed). A group can chain (A → B → A'): all of its
members end up in one token. Each fused token is the attention- and size-weighted mean
``Σ x_i ā_i s_i/s_max / Σ ā_i s_i/s_max`` (``ā``: the attention received, ``s_max``: the image's
largest size), its size the sum of the members' sizes; later blocks add ``log(size)`` to their
attention logits (proportional attention, done by the backbone from ``TokenState.size``). The
survivors keep their original order (the reference lists the A side first; the order of tokens
changes nothing in a ViT after its position embedding).

Where the attention comes from (the reference's "one-step-ahead" attention, mapped onto the
reduction point, which lies inside block ``b`` after its attention and before its MLP): the
reference fuses at the start of block ``b`` and scores informativeness with block ``b``'s own
attention, ``softmax(q kᵀ/√d + log s)`` from that block's queries and keys on the tokens *before*
fusion, then approximates the block's attention output on the fused tokens by merging that map.
Here block ``b``'s attention has already run on the unfused tokens when the point is reached, so
the criterion is exactly the reference's (block ``b``'s queries and keys, pre-fusion, with
proportional attention), the block's attention output is exact instead of merged, and the tokens
fused are the block's post-attention tokens, before the MLP. ``F.scaled_dot_product_attention``
never returns its map, so the reducer recomputes ``q kᵀ`` once for the ``N + 1`` tokens (counted by
``simprune bench flops``; docs/method.md gives the cost).

To go below ``N // 2`` (the reference's cap per step), fusion runs in several rounds, as ToMe's
does; a later round scores with the fused tokens and, as the attention received, the sum over each
group (the key columns of the merged map summed, as the reference's merged attention does).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from simprune.models.layers import attention_bias
from simprune.models.vit import ReductionPoint
from simprune.reducers.base import REDUCERS, TokenReducer
from simprune.tokens import TokenState, gather_patches, invert_keep

#: the reference's τ (similarity, informativeness, size): the criteria's exponents are 1/τ
TAU = (1.0, 20.0, 40.0)


def received_attention(q: Tensor, k: Tensor, size: Tensor | None = None,
                       mask: Tensor | None = None) -> Tensor:
    """Attention each token receives, averaged over heads and all queries (CLS included).

    Args:
        q, k: ``[B, H, n, hd]`` queries and keys; size: ``[B, n]`` token sizes (proportional
            attention adds ``log size`` to the logits); mask: ``[B, n, n]`` connections or ``None``.
    Returns:
        ``[B, n]`` float32 (each row sums to 1).
    """
    logits = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])
    bias = attention_bias(size, mask, torch.float32)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1).mean(dim=(1, 2))


def split_positions(n: int, num_prefix: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Patch positions of sets A and B: the reference alternates over the whole sequence (prefix
    included, CLS at index 0 in A), so A holds the patches at even sequence indices."""
    first_a = num_prefix % 2
    return (torch.arange(first_a, n, 2, device=device),
            torch.arange(1 - first_a, n, 2, device=device))


def mctf_scores(metric: Tensor, info: Tensor, size: Tensor, a_pos: Tensor, b_pos: Tensor,
                tau: tuple[float, float, float] = TAU) -> Tensor:
    """``W_sim · W_info · W_size`` between the A and B patch tokens.

    Args:
        metric: ``[B, N, d]`` the patch tokens; info: ``[B, N]`` their informativeness ``I``
            and size: ``[B, N]`` their ``1/s``, both already divided by the image's maximum;
        a_pos, b_pos: positions of A and B; tau: ``(τ_sim, τ_info, τ_size)``, exponents
            ``1/τ`` (``τ = 0``: that criterion is left out).
    Returns:
        ``[B, |A|, |B|]`` float32 scores (non-negative).
    """
    e_sim, e_info, e_size = (0.0 if t == 0 else 1.0 / t for t in tau)  # τ = 0: criterion off
    m = F.normalize(metric.float(), dim=-1)
    w_sim = ((m[:, a_pos] @ m[:, b_pos].transpose(1, 2) + 1.0) / 2.0).clamp(min=0.0) ** e_sim
    w_info = (info[:, a_pos, None] * info[:, None, b_pos]) ** e_info
    w_size = (size[:, a_pos, None] * size[:, None, b_pos]) ** e_size
    return w_sim * w_info * w_size


def bidirectional_plan(scores: Tensor, a_pos: Tensor, b_pos: Tensor, n: int,
                       r: int) -> tuple[Tensor, Tensor]:
    """Bidirectional bipartite matching: ``r // 2`` A → B fusions, then ``r − r // 2`` B → unfused A.

    Args:
        scores: ``[B, |A|, |B|]``; a_pos, b_pos: the sets' patch positions; n: patch tokens;
            r: fusions, ``1 <= r <= n // 2``.
    Returns:
        ``dst: [B, n]`` the position each token's content ends in (itself for survivors; a chain
        A → B → A' ends in A') and ``keep: [B, n − r]`` the surviving positions in original order.
    """
    b, n_a, n_b = scores.shape
    r1, r2 = r // 2, r - r // 2
    best, partner = scores.max(dim=-1)  # [B, |A|]
    order = best.argsort(dim=-1, descending=True, stable=True)
    src_a, unm_a = order[:, :r1], order[:, r1:]  # A-local indices
    # B -> the unfused A tokens, on the same scores restricted to them
    sub = scores.gather(1, unm_a.unsqueeze(-1).expand(-1, -1, n_b)).transpose(1, 2)  # [B, |B|, |A|-r1]
    best2, partner2 = sub.max(dim=-1)  # [B, |B|]
    src_b = best2.argsort(dim=-1, descending=True, stable=True)[:, :r2]  # B-local indices
    dst = torch.arange(n, device=scores.device).expand(b, n).clone()
    dst.scatter_(1, b_pos[src_b], a_pos[unm_a.gather(1, partner2.gather(1, src_b))])
    # A -> its B partner, and on to wherever that B token went
    dst.scatter_(1, a_pos[src_a], dst.gather(1, b_pos[partner.gather(1, src_a)]))
    fused = torch.zeros(b, n, dtype=torch.bool, device=scores.device)
    fused.scatter_(1, a_pos[src_a], True)
    fused.scatter_(1, b_pos[src_b], True)
    keep = fused.to(torch.int8).sort(dim=1, stable=True).indices[:, : n - r]
    return dst, keep


def _normalised_inverse(v: Tensor) -> Tensor:
    """``1/v`` divided by its per-row maximum (``v: [B, n] > 0``)."""
    inv = 1.0 / v.clamp(min=1e-12)
    return inv / inv.amax(dim=1, keepdim=True)


def mctf_reduce(state: TokenState, attn: Tensor, k: int,
                tau: tuple[float, float, float] = TAU) -> TokenState:
    """Fuse ``state``'s patch tokens down to ``k``.

    Args:
        state: the tokens at the point (``P`` prefix tokens, ``N`` patches).
        attn: ``[B, P + N]`` attention each token receives (:func:`received_attention`).
        k: patch tokens to keep, ``1 <= k <= N``.
    Returns:
        The fused state: ``P + k`` tokens, sizes summed, ``source`` following every fusion.
    """
    p = state.num_prefix
    attn = attn.detach().float()
    if state.size is None:
        ones = state.x.new_ones(state.x.shape[0], state.x.shape[1], dtype=torch.float32)
        state = TokenState(state.x, state.ids, state.source, ones, state.attn_mask, p)
    while state.num_patches > k:
        n = state.num_patches
        r = min(n - k, n // 2)
        size = state.size.float()
        a_pos, b_pos = split_positions(n, p, state.x.device)
        with torch.no_grad():
            scores = mctf_scores(state.patches.detach(), _normalised_inverse(attn)[:, p:],
                                 _normalised_inverse(size)[:, p:], a_pos, b_pos, tau)
            dst, keep = bidirectional_plan(scores, a_pos, b_pos, n, r)
            weight = attn[:, p:] * size[:, p:] / size.amax(dim=1, keepdim=True)  # [B, N]
            norm = torch.zeros_like(weight).scatter_add(1, dst, weight)
            total = torch.zeros_like(weight).scatter_add(1, dst, size[:, p:])
            got = torch.zeros_like(weight).scatter_add(1, dst, attn[:, p:])
        values = state.patches
        sums = torch.zeros(values.shape, dtype=torch.float32, device=values.device).scatter_add(
            1, dst.unsqueeze(-1).expand_as(values), values.float() * weight.unsqueeze(-1))
        fused = (sums / norm.clamp(min=1e-30).unsqueeze(-1)).to(values.dtype)
        old_to_new = invert_keep(keep, n).gather(1, dst)
        state = gather_patches(state, keep, x_patches=fused, old_to_new=old_to_new,
                               size_patches=total)
        attn = torch.cat([attn[:, :p], got.gather(1, keep)], dim=1)
    return state


@REDUCERS.register("mctf")
class MCTFReducer(TokenReducer):
    """Multi-criteria token fusion with the block's own pre-fusion attention (one step ahead).

    Args:
        tau_sim, tau_info, tau_size: the criteria's ``τ`` (exponents ``1/τ``; the reference's 1,
            20 and 40). A ``τ`` of 0 leaves that criterion out, as in the reference.
    """

    name = "mctf"
    needs = frozenset({"qk"})

    def __init__(self, tau_sim: float = TAU[0], tau_info: float = TAU[1],
                 tau_size: float = TAU[2]) -> None:
        for key, value in (("tau_sim", tau_sim), ("tau_info", tau_info), ("tau_size", tau_size)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"mctf {key} must be a number >= 0 (0: criterion off), got {value!r}")
        self.tau_sim, self.tau_info, self.tau_size = float(tau_sim), float(tau_info), float(tau_size)

    def __call__(self, point: ReductionPoint, k: int) -> TokenState:
        ex, s = point.extras, point.state
        if ex.q is None or ex.k is None:
            raise RuntimeError("mctf needs the queries and keys; run the backbone with need={'qk'}")
        with torch.no_grad():
            attn = received_attention(ex.q, ex.k, s.size, s.attn_mask)
        return mctf_reduce(s, attn, k, (self.tau_sim, self.tau_info, self.tau_size))
