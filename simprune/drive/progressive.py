"""PCAE's progressive dropping on every patch token of an image, with each layer's tokens kept.

What PCAE's teacher does (:class:`simprune.frameworks.pcae.PCAE`), without the masking: the patch
tokens after the patch embedding (position embedding added), **no CLS token**, through the blocks;
after the attention of each block in ``drop_at`` the tokens are cut to ``int(keep · n)``: the ones
least like the mean (``mean_sim``, the paper's score or the reference's ``normalized``), random ones
(``random``), or none (``none``). The state after the embedding (layer 0) and after every block
(layers 1..depth, before the final norm) is returned: what the paper's Figure 3a measures
(:mod:`simprune.viz.diversity`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from simprune.models.vit import VisionTransformer
from simprune.reducers.mean_sim import mean_sim_keep
from simprune.tokens import gather_patches, initial_state

DROPS = ("mean_sim", "random", "none")


def drop_count(n: int, keep: float) -> int:
    """``int(keep · n)``, at least 1 (PCAE's rule)."""
    return max(1, min(n, int(round(keep * n, 9))))


@torch.no_grad()
def progressive_layers(backbone: VisionTransformer, images: Tensor, drop: str = "mean_sim",
                       drop_at: Sequence[int] = (1, 5, 9), keep: float = 0.5, score: str = "paper",
                       seed: int = 0) -> list[Tensor]:
    """``[layer 0, ..., layer depth]`` patch tokens ``[B, N_l, D]`` of ``images: [B, C, H, W]``.

    ``random`` draws from a generator seeded by ``seed`` (the global RNG is untouched).
    """
    if drop not in DROPS:
        raise ValueError(f"unknown drop {drop!r}; valid: {', '.join(DROPS)}")
    bad = [b for b in drop_at if not 1 <= b <= backbone.depth]
    if bad and drop != "none":
        raise ValueError(f"drop_at {list(drop_at)}: blocks are 1..{backbone.depth}")
    was = backbone.training
    backbone.eval()
    patches, grid = backbone.patch_embed(images)
    x = patches + backbone.interpolate_pos_embed(grid)[:, 1:]
    state = initial_state(x, num_prefix=0)
    gen = torch.Generator(device=images.device).manual_seed(seed)
    layers = [state.x]
    for number, block in enumerate(backbone.blocks, start=1):
        state, _ = block.attend(state)
        if drop != "none" and number in drop_at:
            k = drop_count(state.num_patches, keep)
            if drop == "mean_sim":
                kept = mean_sim_keep(state.x, k, score)
            else:
                noise = torch.rand(state.x.shape[:2], generator=gen, device=images.device)
                kept = noise.argsort(dim=1)[:, :k].sort(dim=1).values
            state = gather_patches(state, kept)
        state = block.feed_forward(state)
        layers.append(state.x)
    backbone.train(was)
    return layers


__all__ = ["DROPS", "drop_count", "progressive_layers"]
