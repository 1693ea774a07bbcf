"""Losses and the small pure updates around them (DINO's centre): one file per loss, torch only, no
collectives. The EMA update and its momentum schedule are the teacher's: :mod:`simprune.teachers.momentum`."""

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
from simprune.losses.info_nce import info_nce, info_nce_per_sample

__all__ = [
    "collapse_stats",
    "cross_entropy",
    "cross_entropy_per_sample",
    "dino_loss",
    "dino_loss_per_sample",
    "info_nce",
    "info_nce_per_sample",
    "smooth_targets",
    "soft_cross_entropy",
    "soft_cross_entropy_per_sample",
    "teacher_probs",
    "teacher_temp_at",
    "update_center",
    "update_center_",
]
