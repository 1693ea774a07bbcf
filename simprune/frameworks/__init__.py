"""Dual-branch SSL frameworks with token reduction."""

from simprune.frameworks.base import DENSE, DualBranch, PruneSettings, StepOutput
from simprune.frameworks.dino import DINO, dino_loss
from simprune.frameworks.mocov3 import MoCoV3, info_nce

FRAMEWORKS = ("dino", "mocov3")

__all__ = ["DENSE", "DINO", "FRAMEWORKS", "DualBranch", "MoCoV3", "PruneSettings", "StepOutput",
           "dino_loss", "info_nce"]
