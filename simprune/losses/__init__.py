"""Losses and the small pure updates around them: one file per loss, torch only, no collectives."""

from simprune.losses.ce import (
    cross_entropy,
    cross_entropy_per_sample,
    smooth_targets,
    soft_cross_entropy,
    soft_cross_entropy_per_sample,
)
from simprune.losses.dino import (
    collapse_stats,
    dino_loss,
    dino_loss_per_sample,
    teacher_probs,
    teacher_temp_at,
    update_center,
    update_center_,
)
from simprune.losses.ema import ema_update_, momentum_at
from simprune.losses.info_nce import info_nce, info_nce_per_sample

__all__ = [
    "collapse_stats",
    "cross_entropy",
    "cross_entropy_per_sample",
    "dino_loss",
    "dino_loss_per_sample",
    "ema_update_",
    "info_nce",
    "info_nce_per_sample",
    "momentum_at",
    "smooth_targets",
    "soft_cross_entropy",
    "soft_cross_entropy_per_sample",
    "teacher_probs",
    "teacher_temp_at",
    "update_center",
    "update_center_",
]
