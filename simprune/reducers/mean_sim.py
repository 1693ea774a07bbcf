"""``mean_sim`` (PCAE): drop the patches most cosine-similar to the mean patch token."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from simprune.models.vit import ReductionPoint
from simprune.reducers.base import REDUCERS, TokenReducer
from simprune.tokens import TokenState, gather_patches


def mean_similarity(x: Tensor) -> Tensor:
    """``x: [B, N, D]`` -> ``[B, N]`` cosine similarity of each token to the mean token."""
    mean = x.float().mean(dim=1, keepdim=True)
    return F.cosine_similarity(x.float(), mean, dim=-1)


def mean_sim_keep(x: Tensor, k: int) -> Tensor:
    """``[B, K]`` positions of the K tokens least similar to the mean, in original order.

    Equal similarities rank lowest position first (stable sort), so ties at the cut keep the
    lowest positions.
    """
    order = mean_similarity(x).argsort(dim=1, stable=True)  # least similar first
    return order[:, :k].sort(dim=1).values


@REDUCERS.register("mean_sim")
class MeanSimReducer(TokenReducer):
    """Keep the K patches least like the average patch (redundant ones go)."""

    name = "mean_sim"

    def __call__(self, point: ReductionPoint, k: int) -> TokenState:
        s = point.state
        return gather_patches(s, mean_sim_keep(s.patches.detach(), k))
