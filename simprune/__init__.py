"""simprune: token reduction for cheaper self-supervised ViT training."""

__version__ = "0.1.0"
