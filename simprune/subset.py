"""Seeded random subsets of a dataset's indices: one draw shared by evaluation (k-NN bank, probe
and test subsets), training subsets and the held-out split, so that every part draws the same way.
A leaf helper: it imports only torch, so data and eval may both use it."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["random_subset"]


def random_subset(n_total: int, n: int | None, seed: int) -> Tensor:
    """Sorted indices of ``n`` samples drawn uniformly without replacement from ``range(n_total)``.

    Datasets are often stored sorted by class, so a subset must be random, never the first ``n``.
    The draw depends only on ``(n_total, n, seed)`` (a private CPU generator; the global RNG is
    untouched).

    Args:
        n_total: size of the dataset, ``>= 0``.
        n: subset size, ``>= 1``; ``None`` or ``n >= n_total`` selects everything.
        seed: seed of the draw.

    Returns:
        ``[min(n, n_total)]`` int64 indices on CPU, ascending.
    """
    if isinstance(n_total, bool) or not isinstance(n_total, int) or n_total < 0:
        raise ValueError(f"n_total must be an int >= 0, got {n_total!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be None (all samples) or an int >= 1, got {n!r}")
    if n is None or n >= n_total:
        return torch.arange(n_total, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=gen)[:n].sort().values
