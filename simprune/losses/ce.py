"""Cross-entropy for supervised classification: hard labels with label smoothing, and soft targets
(probabilities, as mixup and cutmix produce them).

Label smoothing ``ε`` over ``C`` classes trains against ``(1 − ε)·onehot(y) + ε / C`` (the uniform
part includes the true class, as in ``torch.nn.functional.cross_entropy``). Logits in half precision
are computed in float32; float64 stays float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")


def smooth_targets(labels: Tensor, num_classes: int, label_smoothing: float = 0.0) -> Tensor:
    """``labels: [B]`` class indices -> ``[B, C]`` float32 targets ``(1 − ε)·onehot + ε / C``.

    Mixup/cutmix mix these: ``λ·smooth_targets(y) + (1 − λ)·smooth_targets(y[perm])``.
    """
    _check_smoothing(label_smoothing)
    onehot = F.one_hot(labels, num_classes).float()
    return onehot * (1.0 - label_smoothing) + label_smoothing / num_classes


def cross_entropy_per_sample(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """``logits: [B, C]``, ``labels: [B]`` class indices -> ``[B]`` losses."""
    _check_smoothing(label_smoothing)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [B, C] and labels [B], got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    return F.cross_entropy(_at_least_fp32(logits), labels, reduction="none",
                           label_smoothing=label_smoothing)


def cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean of :func:`cross_entropy_per_sample` over the batch: ``[]``."""
    return cross_entropy_per_sample(logits, labels, label_smoothing).mean()


def soft_cross_entropy_per_sample(logits: Tensor, targets: Tensor) -> Tensor:
    """``H(targets, softmax(logits))`` per row: ``logits, targets: [B, C]`` -> ``[B]``.

    ``targets`` rows are probabilities (non-negative, summing to 1); they are not checked, to avoid
    a device sync.
    """
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise ValueError(f"expected logits and targets of the same shape [B, C], got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    logp = F.log_softmax(_at_least_fp32(logits), dim=-1)
    return -(targets.to(logp.dtype) * logp).sum(dim=-1)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean of :func:`soft_cross_entropy_per_sample` over the batch: ``[]``."""
    return soft_cross_entropy_per_sample(logits, targets).mean()
