"""How much of a set of features is one shared direction.

A cosine distillation loss against features that all point almost the same way is nearly constant:
a student that outputs their mean direction already scores ``1 − cos ≈ 0``. These two numbers say
whether a teacher's features are in that state (``scripts/feature_direction.py`` prints them for a
run).

    mean_pairwise_cosine(feats)   # [N, D] -> mean cos over the N(N-1) ordered pairs i != j
    mean_energy_share(feats)      # ||mean||^2 / mean ||f_i||^2: 1 when all are equal, 0 when centred
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mean_pairwise_cosine", "mean_energy_share"]


def _check(feats: Tensor) -> None:
    if feats.dim() != 2 or feats.shape[0] < 2:
        raise ValueError(f"feats must be [N, D] with N >= 2, got shape {tuple(feats.shape)}")


def mean_pairwise_cosine(feats: Tensor) -> float:
    """Mean of ``cos(f_i, f_j)`` over all ordered pairs ``i != j`` of ``feats`` ``[N, D]``."""
    _check(feats)
    f = torch.nn.functional.normalize(feats.double(), dim=-1)
    n = f.shape[0]
    total = f.sum(dim=0).pow(2).sum() - f.pow(2).sum()  # sum over i != j of f_i . f_j
    return float(total / (n * (n - 1)))


def mean_energy_share(feats: Tensor) -> float:
    """``||mean_i f_i||² / mean_i ||f_i||²`` of ``feats`` ``[N, D]``, in ``[0, 1]``."""
    _check(feats)
    f = feats.double()
    return float(f.mean(dim=0).pow(2).sum() / f.pow(2).sum(dim=1).mean())
