"""The MAE decoder (He et al., 2022; METHOD.md "MAE"), which PCAE reuses with a smaller target set.

Input: the encoder's final tokens ``[B, 1 + K, D]`` (CLS, then the K visible patches) with the
visible patches' original ids, and the original ids of the positions to predict. The decoder

1. maps every encoder token to the decoder width (``embed``: ``D -> dim``),
2. appends one learned ``mask_token`` per position to predict,
3. adds fixed 2-D sine-cosine position embeddings (the CLS row is zero) at every token's original
   position,
4. runs ``depth`` pre-norm transformer blocks on the ``1 + K + M`` tokens, then a LayerNorm,
5. maps the M appended tokens to ``out_dim`` (``pred``): ``p²·C`` pixels for MAE, the encoder
   width for PCAE.

MAE predicts at every masked position (``M = N − K``: the decoder sees all ``1 + N`` tokens, as the
reference's unshuffled sequence); PCAE only at the teacher's surviving positions (6 of 48 on the
CPU model), which is where its saving comes from. The order of the tokens does not matter to the
blocks (the position embeddings say where each token is), so the visible tokens stay in the
encoder's order and the mask tokens follow, in the order of ``target_ids``; output row ``j`` is the
prediction at ``target_ids[:, j]``. The reference also applies ``pred`` to the visible tokens and
discards those outputs; this decoder does not compute them.

Initialisation as MAE's: Xavier-uniform linear weights, zero biases, unit LayerNorms, the mask
token from N(0, 0.02).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from simprune.models.init import sincos_pos_embed
from simprune.models.layers import Block
from simprune.tokens import initial_state


def gather_rows(x: Tensor, ids: Tensor) -> Tensor:
    """``x: [B | 1, N, D]``, ``ids: [B, M]`` -> ``[B, M, D]`` (rows of each sample)."""
    x = x.expand(ids.shape[0], -1, -1)
    return x.gather(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class MAEDecoder(nn.Module):
    """A light transformer that predicts ``out_dim`` values at given patch positions.

    Args:
        embed_dim: the encoder's width ``D``.
        grid: the patch grid ``(gh, gw)``.
        out_dim: values predicted per position (``p²·C`` pixels, or ``D`` features).
        dim, depth, num_heads, mlp_ratio: the decoder's width, blocks, heads and MLP ratio.
        drop_path: stochastic depth rate of every decoder block (PCAE's reference: 0.25).
    """

    def __init__(self, embed_dim: int, grid: tuple[int, int], out_dim: int, dim: int = 64,
                 depth: int = 8, num_heads: int = 4, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        if depth < 0:
            raise ValueError(f"decoder depth must be >= 0, got {depth}")
        if dim < 1 or dim % num_heads:
            raise ValueError(f"decoder width {dim} must be a positive multiple of its heads "
                             f"({num_heads})")
        if dim % 4:
            raise ValueError(f"decoder width {dim} must be divisible by 4 (2-D sin-cos positions)")
        self.grid = tuple(grid)
        self.dim = dim
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed(self.grid, dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, True, drop_path)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def forward(self, tokens: Tensor, visible_ids: Tensor, target_ids: Tensor) -> Tensor:
        """Predictions at ``target_ids``.

        Args:
            tokens: ``[B, 1 + K, D]`` encoder output, CLS first.
            visible_ids: ``[B, K]`` original patch id of each encoder patch token.
            target_ids: ``[B, M]`` original patch ids to predict at.
        Returns:
            ``[B, M, out_dim]``, row ``j`` the prediction at ``target_ids[:, j]``.
        """
        b, k = visible_ids.shape
        if tokens.shape[:2] != (b, 1 + k):
            raise ValueError(f"decoder input {tuple(tokens.shape)} does not fit {k} visible ids "
                             f"(expected [{b}, {1 + k}, D])")
        pos = self.pos_embed.to(tokens.dtype)
        h = self.embed(tokens)
        h = h + torch.cat([pos[:, :1].expand(b, -1, -1), gather_rows(pos[:, 1:], visible_ids)], 1)
        queries = self.mask_token.to(h.dtype) + gather_rows(pos[:, 1:], target_ids)
        state = initial_state(torch.cat([h, queries], dim=1))
        for block in self.blocks:
            state = block(state)
        return self.pred(self.norm(state.x[:, 1 + k:]))

    def extra_repr(self) -> str:
        return f"grid={self.grid}, dim={self.dim}, depth={self.depth}"


def decoder_size(decoder: MAEDecoder) -> str:
    """``"8x64"``: blocks x width, as cost tables show it."""
    return f"{decoder.depth}x{decoder.dim}"


__all__ = ["MAEDecoder", "decoder_size", "gather_rows"]
