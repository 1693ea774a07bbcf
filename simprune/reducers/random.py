"""``random``: keep K random patch tokens per sample (a baseline with no signal)."""

from __future__ import annotations

import torch
from torch import Tensor

from simprune.models.vit import ReductionPoint
from simprune.reducers.base import REDUCERS, TokenReducer
from simprune.tokens import TokenState, gather_patches


def random_keep(batch: int, n: int, k: int, device: torch.device) -> Tensor:
    """``[B, K]`` sorted positions of K distinct random tokens out of ``n``, drawn per sample."""
    noise = torch.rand(batch, n, device=device)
    return noise.topk(k, dim=1).indices.sort(dim=1).values


@REDUCERS.register("random")
class RandomReducer(TokenReducer):
    """Keep K random patch tokens (torch's RNG, so a fixed seed fixes the choice)."""

    name = "random"

    def __call__(self, point: ReductionPoint, k: int) -> TokenState:
        s = point.state
        return gather_patches(s, random_keep(s.x.shape[0], s.num_patches, k, s.x.device))
