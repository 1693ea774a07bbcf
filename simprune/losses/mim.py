"""Masked-image-modelling losses: MAE's pixel loss and PCAE's feature loss (torch only).

- MAE (:func:`mae_loss`): mean squared error between the predicted and the true pixels of each
  *masked* patch, averaged over the patch's values, then over the masked patches. With
  ``norm_pix`` (MAE's ``norm_pix_loss``, on in the recipes) the target is the patch standardised
  over its own values: ``(p − mean) / sqrt(var + 1e-6)`` (population variance, as
  ``torch.var(unbiased=False)``; the reference uses the unbiased one, so these targets are
  ``sqrt(n/(n−1))`` times the reference's, eps aside: 1.0106 for the 48 values of a 4-px RGB
  patch. The loss of a given prediction is not a constant multiple of the reference's: a model
  learns to predict the scale it is trained on). Only masked patches are ever passed in: the
  decoder predicts at the masked positions only, so the visible patches cannot enter the loss.
- PCAE (:func:`feature_cosine_loss`): ``1 − cos(pred, target)`` per surviving token, where the
  target is the teacher's final-norm feature standardised per token over the feature dimension
  (:func:`standardise`); averaged over the tokens. Cosine ignores scale, so only the centring of
  that standardisation changes the loss.

Each loss has a per-sample variant (``[B]``, the mean over the sample's own terms); every sample
has the same number of terms, so the batch loss is the mean of the per-sample losses.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6


def patchify(images: Tensor, patch: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, N, p·p·C]``, patches row-major (as the ViT's patch tokens), each
    patch's values ordered ``(row, column, channel)`` as MAE's ``patchify``."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {patch}")
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, gh * gw, patch * patch * c)


def unpatchify(patches: Tensor, patch: int, channels: int = 3) -> Tensor:
    """Inverse of :func:`patchify` for a square grid: ``[B, N, p·p·C]`` -> ``[B, C, H, W]``."""
    b, n, _ = patches.shape
    g = int(round(n ** 0.5))
    if g * g != n:
        raise ValueError(f"{n} patches do not form a square grid")
    x = patches.reshape(b, g, g, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, g * patch, g * patch)


def standardise(x: Tensor, eps: float = EPS) -> Tensor:
    """Each row over its last dimension: ``(x − mean) / sqrt(var + eps)`` (population variance)."""
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / (var + eps).sqrt()


def pixel_targets(images: Tensor, patch: int, ids: Tensor, norm_pix: bool = True) -> Tensor:
    """``[B, M, p·p·C]`` targets at patch ids ``ids: [B, M]`` (standardised per patch with
    ``norm_pix``)."""
    patches = patchify(images.float(), patch)
    target = patches.gather(1, ids.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    return standardise(target) if norm_pix else target


def mae_loss_per_sample(pred: Tensor, target: Tensor) -> Tensor:
    """``[B]``: per sample, the mean over its masked patches of the per-patch mean squared error.

    Args:
        pred, target: ``[B, M, P]`` predictions and targets at the sample's M masked patches.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return (pred.float() - target.float()).pow(2).mean(dim=-1).mean(dim=-1)


def mae_loss(pred: Tensor, target: Tensor) -> Tensor:
    """MAE's loss: the mean squared error per masked patch, averaged over all masked patches."""
    return mae_loss_per_sample(pred, target).mean()


def feature_cosine_per_sample(pred: Tensor, teacher: Tensor) -> Tensor:
    """``[B]``: per sample, the mean over its surviving tokens of ``1 − cos(pred, standardise(t))``.

    Args:
        pred: ``[B, M, D]`` decoder outputs; teacher: ``[B, M, D]`` teacher final-norm features at
            the same original patch ids (row ``j`` of both is the same patch).
    """
    if pred.shape != teacher.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and teacher {tuple(teacher.shape)} differ")
    target = standardise(teacher.detach().float())
    return (1.0 - F.cosine_similarity(pred.float(), target, dim=-1)).mean(dim=-1)


def feature_cosine_loss(pred: Tensor, teacher: Tensor) -> Tensor:
    """PCAE's loss: ``1 − cos`` against the standardised teacher features, averaged over tokens."""
    return feature_cosine_per_sample(pred, teacher).mean()


__all__ = ["feature_cosine_loss", "feature_cosine_per_sample", "mae_loss", "mae_loss_per_sample",
           "patchify", "pixel_targets", "standardise", "unpatchify"]
