"""iBOT's masked-patch loss as DINOv2 computes it (METHOD.md "DINOv2-style training").

The teacher sees the unmasked view, the student the masked one; the loss compares, at every masked
position that both branches still hold, the student's patch distribution with the teacher's
centred, sharpened one (:func:`simprune.losses.dino.teacher_probs` with the iBOT centre, which is
its own: an EMA of the mean teacher patch logit at the masked positions).

Weighting (DINOv2's ``forward_masked``): each masked position counts ``1 / (masked positions of
its image)`` and the sum is divided by the number of images, masked or not, so every masked image
contributes the mean over its own masked positions. Under token pruning the count is that of the
positions that survived in both branches (an image whose masked positions were all pruned
contributes 0).

Pure functions over tensors; the caller all-reduces the centre's statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def ibot_weights(rows: Tensor, valid: Tensor, num_images: int) -> Tensor:
    """Per masked position: ``1 / (valid positions of its image)``, 0 where not valid.

    Args:
        rows: ``[T]`` int64 image (batch row) of each masked position.
        valid: ``[T]`` bool, the position survived in both branches.
        num_images: ``G·B``, the rows of the batch (masked or not).
    Returns:
        ``[T]`` float32 weights.
    """
    counts = torch.zeros(num_images, dtype=torch.float32, device=rows.device)
    counts.index_add_(0, rows, valid.float())
    return valid.float() / counts.gather(0, rows).clamp(min=1.0)


def ibot_loss_terms(student_logits: Tensor, teacher_probs: Tensor, student_temp: float) -> Tensor:
    """``[T]`` cross-entropy ``−Σ_k t_k log softmax(s / τ_s)_k`` per masked position (fp32)."""
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher probabilities "
                         f"{tuple(teacher_probs.shape)} must have the same shape [T, K]")
    logp = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    return -(teacher_probs.float() * logp).sum(dim=-1)


def ibot_loss(student_logits: Tensor, teacher_probs: Tensor, weights: Tensor, num_images: int,
              student_temp: float) -> Tensor:
    """DINOv2's iBOT loss: ``Σ_t w_t · H(t_t, s_t) / num_images``.

    Args:
        student_logits: ``[T, K]`` student head outputs at the masked positions.
        teacher_probs: ``[T, K]`` centred, sharpened teacher probabilities there.
        weights: ``[T]`` from :func:`ibot_weights` (0 for a position a branch pruned).
        num_images: the batch's rows ``G·B`` (every global crop, masked or not).
    Returns:
        ``[]`` the loss (0 when no position is valid).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    terms = ibot_loss_terms(student_logits, teacher_probs, student_temp)
    return (terms * weights).sum() / num_images


def ibot_per_image(student_logits: Tensor, teacher_probs: Tensor, weights: Tensor, rows: Tensor,
                   num_images: int, student_temp: float) -> Tensor:
    """``[num_images]`` each image's weighted sum (its mean over its valid masked positions);
    their mean is :func:`ibot_loss`."""
    terms = ibot_loss_terms(student_logits, teacher_probs, student_temp) * weights
    out = torch.zeros(num_images, dtype=terms.dtype, device=terms.device)
    return out.index_add_(0, rows, terms)


def masked_center_stats(teacher_logits: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """The iBOT centre's batch statistics: ``(Σ_t v_t · logits_t [1, K], Σ_t v_t [])`` over the
    valid positions ``v_t = weights_t > 0``; the caller all-reduces both and divides."""
    v = (weights > 0).to(teacher_logits.dtype)
    return (teacher_logits * v[:, None]).sum(0, keepdim=True), v.sum()


__all__ = ["ibot_loss", "ibot_loss_terms", "ibot_per_image", "ibot_weights", "masked_center_stats"]
