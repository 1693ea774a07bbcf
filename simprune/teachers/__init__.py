"""Teachers: the branch a student learns from.

=========  ===================================================================================
kind       what it is
=========  ===================================================================================
``ema``    a copy of the student updated as a moving average of it (DINO, MoCo v3)
``frozen`` a model of any width or depth loaded strictly from a simprune run or a timm-named
           safetensors file, in eval mode, without gradients (distillation)
``none``   no teacher (supervised training)
=========  ===================================================================================
"""

from simprune.teachers.ema import EMATeacher, copy_matching_
from simprune.teachers.frozen import load_frozen_teacher

TEACHER_KINDS = ("ema", "frozen", "none")

__all__ = ["TEACHER_KINDS", "EMATeacher", "copy_matching_", "load_frozen_teacher"]
