"""KoLeo (Sablayrolles et al. 2019), DINOv2's spreading regulariser (METHOD.md, ANCHORS.md 6.2).

On the student backbone's CLS features of one global-crop chunk (``B`` images, so two crops of the
same image are never neighbours): L2-normalise, find every row's nearest other row (largest dot
product, the diagonal excluded), and return ``−mean log(‖z_i − z_nn(i)‖ + eps)``. Always in fp32,
autocast off. A chunk of one row has no neighbour: :func:`koleo_loss` refuses it (the public
reference returns NaN, facebookresearch/dinov2#314).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-8


def check_koleo_batch(batch: int, where: str = "") -> None:
    """KoLeo needs at least two images per chunk (a nearest neighbour)."""
    if batch < 2:
        raise ValueError(f"{where}KoLeo needs at least 2 images per global-crop chunk to find a "
                         f"nearest neighbour, got {batch}; use a batch of >= 2 per process or set "
                         "the KoLeo weight to 0")


def koleo_loss(features: Tensor, eps: float = EPS) -> Tensor:
    """``−mean_i log(‖z_i − z_nn(i)‖₂ + eps)`` of ``features: [B, D]`` (``z``: L2-normalised, fp32).

    The distance is ``torch.nn.PairwiseDistance``'s: ``‖z_i − z_j + eps‖₂``.
    """
    check_koleo_batch(features.shape[0])
    with torch.autocast(features.device.type, enabled=False):
        z = F.normalize(features.float(), dim=-1, eps=eps)
        with torch.no_grad():
            dots = z @ z.t()
            dots.fill_diagonal_(-1.0)
            nn_idx = dots.argmax(dim=1)
        dist = F.pairwise_distance(z, z[nn_idx], p=2, eps=eps)
        return -torch.log(dist + eps).mean()


__all__ = ["EPS", "check_koleo_batch", "koleo_loss"]
