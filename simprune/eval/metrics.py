"""Top-k accuracy of class scores, shared by the k-NN and linear-probe evaluations."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["topk_accuracy"]


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Percent of rows whose label is among the ``k`` highest scores, for each ``k`` in ``ks``.

    Args:
        scores: ``[M, C]`` class scores (or logits), ``M >= 1``.
        labels: ``[M]`` integer labels (moved to the scores' device).
        ks: the ``k`` values; each is clamped to ``C``.

    Returns:
        ``{"top{k}": percent}`` as python floats (one host sync).
    """
    if scores.ndim != 2 or scores.shape[0] < 1:
        raise ValueError(f"scores must be [M, C] with M >= 1, got shape {tuple(scores.shape)}")
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"labels must be [M] = [{scores.shape[0]}] to match scores, got {tuple(labels.shape)}"
        )
    if not ks or any(isinstance(kk, bool) or not isinstance(kk, int) or kk < 1 for kk in ks):
        raise ValueError(f"ks must be a non-empty tuple of ints >= 1, got {ks!r}")
    labels = labels.to(scores.device)
    max_k = min(max(ks), scores.shape[1])
    ranked = scores.topk(max_k, dim=1).indices  # [M, max_k]
    hits = ranked == labels.view(-1, 1)  # [M, max_k], at most one True per row
    counts = torch.stack([hits[:, : min(kk, max_k)].any(dim=1).sum() for kk in ks])
    percents = (counts.double() * (100.0 / scores.shape[0])).tolist()
    return {f"top{kk}": p for kk, p in zip(ks, percents, strict=True)}
