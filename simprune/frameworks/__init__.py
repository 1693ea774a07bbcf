"""Training frameworks, registered by name (``FRAMEWORKS.names()``): DINO, DINOv2-style (DINO +
iBOT + KoLeo, ``dinov2``) and MoCo v3 (dual-branch SSL with an EMA teacher), MAE and PCAE (masked
image modelling), supervised classification and Tri-Level E-ViT (``trilevel``), and distillation
from a frozen teacher (``distill``). See :mod:`simprune.frameworks.base` for the protocol a new
framework implements."""

from simprune.frameworks.base import (
    DENSE,
    FRAMEWORKS,
    Batch,
    DataInfo,
    Framework,
    Progress,
    StepOutput,
)
from simprune.frameworks.dino import DINO, DINOConfig
from simprune.frameworks.dinov2 import DINOv2, DINOv2Config
from simprune.frameworks.distill import Distill, DistillConfig
from simprune.frameworks.dual import DualBranch
from simprune.frameworks.mae import MAE, MAEConfig
from simprune.frameworks.mocov3 import MoCoV3, MoCoV3Config
from simprune.frameworks.pcae import PCAE, PCAEConfig
from simprune.frameworks.supervised import Supervised, SupervisedConfig
from simprune.frameworks.trilevel import Trilevel, TrilevelConfig

__all__ = ["DENSE", "DINO", "FRAMEWORKS", "MAE", "PCAE", "Batch", "DINOConfig", "DINOv2",
           "DINOv2Config", "DataInfo", "Distill",
           "DistillConfig", "DualBranch", "Framework", "MAEConfig", "MoCoV3", "MoCoV3Config",
           "PCAEConfig", "Progress", "StepOutput", "Supervised", "SupervisedConfig", "Trilevel",
           "TrilevelConfig"]
