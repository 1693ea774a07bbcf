"""ViT backbones with reduction points."""

from simprune.models.configs import MODELS, create_model, model_config
from simprune.models.vit import ReductionPoint, VisionTransformer, ViTConfig
from simprune.models.weights import LoadReport, WeightLoadError, load_weights

__all__ = [
    "MODELS",
    "LoadReport",
    "ReductionPoint",
    "ViTConfig",
    "VisionTransformer",
    "WeightLoadError",
    "create_model",
    "load_weights",
    "model_config",
]
