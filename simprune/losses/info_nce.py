"""InfoNCE as MoCo v3 uses it (Chen et al., 2021): cosine logits at temperature ``T`` against the
keys of the whole global batch, scaled by ``2T`` as in the reference recipe.

The caller gathers the keys over processes (``k_all = [k of rank 0; k of rank 1; ...]``) and passes
the row of its own first positive (``rank · B``), so the loss itself needs no collectives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _logits_labels(q: Tensor, k_all: Tensor, temperature: float, offset: int) -> tuple[Tensor, Tensor]:
    if q.ndim != 2 or k_all.ndim != 2 or q.shape[1] != k_all.shape[1]:
        raise ValueError(f"expected q: [B, d] and k_all: [W·B, d], got {tuple(q.shape)} and "
                         f"{tuple(k_all.shape)}")
    if offset < 0 or offset + q.shape[0] > k_all.shape[0]:
        raise ValueError(f"offset {offset} puts the positives of {q.shape[0]} queries outside the "
                         f"{k_all.shape[0]} keys; valid offsets are 0..{k_all.shape[0] - q.shape[0]}")
    q = F.normalize(q.float(), dim=1)
    k_all = F.normalize(k_all.float(), dim=1)
    logits = q @ k_all.t() / temperature
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return logits, labels


def info_nce(q: Tensor, k_all: Tensor, temperature: float, offset: int = 0) -> Tensor:
    """InfoNCE of queries against all keys; the positive of query ``i`` is key ``offset + i``.

    Args:
        q: ``[B, d]`` queries (this process).
        k_all: ``[W·B, d]`` keys gathered from every process (no gradient needed).
        temperature: ``T``.
        offset: row of this process's first positive in ``k_all`` (``rank · B``).
    Returns:
        ``[]``: ``2T · mean_i CE(q_i · k_all / T, offset + i)`` on L2-normalised vectors.
    """
    logits, labels = _logits_labels(q, k_all, temperature, offset)
    return F.cross_entropy(logits, labels) * (2 * temperature)


def info_nce_per_sample(q: Tensor, k_all: Tensor, temperature: float, offset: int = 0) -> Tensor:
    """:func:`info_nce` per query: ``[B]``; its mean equals :func:`info_nce` up to rounding."""
    logits, labels = _logits_labels(q, k_all, temperature, offset)
    return F.cross_entropy(logits, labels, reduction="none") * (2 * temperature)
