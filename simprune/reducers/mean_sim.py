"""``mean_sim`` (PCAE): drop the patches most cosine-similar to the mean patch token.

Two scores (``score`` option), both "how much like the average token is this token":

- ``paper`` (the default; PCAE's Eq. 3): ``cos(x_i, mean_j x_j)``, the cosine to the mean of the
  raw tokens;
- ``normalized`` (PCAE's reference code): ``<x̂_i, mean_j x̂_j>`` with ``x̂`` the L2-normalised
  tokens, i.e. the cosine to the mean of the *normalised* tokens (times that mean's norm, the same
  for every token of a sample). The two rank differently when token norms differ.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from simprune.models.vit import ReductionPoint
from simprune.reducers.base import REDUCERS, TokenReducer
from simprune.tokens import TokenState, gather_patches

SCORES = ("paper", "normalized")


def mean_similarity(x: Tensor, score: str = "paper") -> Tensor:
    """``x: [B, N, D]`` -> ``[B, N]`` similarity of each token to the mean token (``score``)."""
    x = x.float()
    if score == "paper":
        return F.cosine_similarity(x, x.mean(dim=1, keepdim=True), dim=-1)
    if score == "normalized":
        xn = F.normalize(x, dim=-1)
        return (xn * xn.mean(dim=1, keepdim=True)).sum(dim=-1)
    raise ValueError(f"unknown mean_sim score {score!r}; valid: {', '.join(SCORES)}")


def mean_sim_keep(x: Tensor, k: int, score: str = "paper") -> Tensor:
    """``[B, K]`` positions of the K tokens least similar to the mean, in original order.

    Equal similarities rank lowest position first (stable sort), so ties at the cut keep the
    lowest positions.
    """
    order = mean_similarity(x, score).argsort(dim=1, stable=True)  # least similar first
    return order[:, :k].sort(dim=1).values


@REDUCERS.register("mean_sim")
class MeanSimReducer(TokenReducer):
    """Keep the K patches least like the average patch (redundant ones go)."""

    name = "mean_sim"

    def __init__(self, score: str = "paper") -> None:
        if score not in SCORES:
            raise ValueError(f"unknown mean_sim score {score!r}; valid: {', '.join(SCORES)}")
        self.score = score

    def __call__(self, point: ReductionPoint, k: int) -> TokenState:
        s = point.state
        return gather_patches(s, mean_sim_keep(s.patches.detach(), k, self.score))
