"""Deterministic evaluation transform: resize the shorter side, centre crop, normalise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import augment_ops as ops
from .stats import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["EvalTransform"]


class EvalTransform(nn.Module):
    """Deterministic evaluation view: resize the shorter side to ``resize_size`` (default
    ``size``), centre-crop ``size x size``, normalise.

    ``forward``: uint8 ``[B, C, H, W]`` (or float in ``[0, 1]``) -> float ``[B, C, size, size]``.
    Images already ``size x size`` (32-px CIFAR at ``size = 32``) are only normalised.
    """

    def __init__(
        self,
        size: int,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        resize_size: int | None = None,
    ) -> None:
        super().__init__()
        resize_size = size if resize_size is None else resize_size
        if size < 1 or resize_size < size:
            raise ValueError(f"need 1 <= size <= resize_size, got size={size}, resize_size={resize_size}")
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {mean} and {std}")
        self.size, self.resize_size = size, resize_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = ops.to_unit_float(images, self.mean.numel())
        h, w = x.shape[-2:]
        if min(h, w) != self.resize_size:
            f = self.resize_size / min(h, w)
            new = (max(self.resize_size, round(h * f)), max(self.resize_size, round(w * f)))
            x = F.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=True)
            h, w = new
        top, left = (h - self.size) // 2, (w - self.size) // 2
        x = x[..., top : top + self.size, left : left + self.size]
        return ops.normalize(x, self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype))
