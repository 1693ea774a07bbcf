"""Named ViT configurations: DeiT at 224/16 and small-image ViTs at 32/4 (64 patch tokens)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from simprune.models.vit import VisionTransformer, ViTConfig
from simprune.registry import Registry

MODELS: Registry[ViTConfig] = Registry("model")

for _name, _cfg in {
    # timm/DeiT names; weights of these load from timm state_dicts or safetensors files.
    "deit_tiny_patch16_224": ViTConfig(embed_dim=192, depth=12, num_heads=3),
    "deit_small_patch16_224": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "deit_base_patch16_224": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    # 32x32 images with 4x4 patches: 64 patch tokens, 12 blocks, reductions at 4/7/10.
    "vit_tiny_patch4_32": ViTConfig(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3),
    # 96 wide: the CPU model (trains in minutes on 2 cores).
    "vit_micro_patch4_32": ViTConfig(img_size=32, patch_size=4, embed_dim=96, depth=12, num_heads=3),
    # 48 wide: for tests and smoke runs.
    "vit_nano_patch4_32": ViTConfig(img_size=32, patch_size=4, embed_dim=48, depth=12, num_heads=3),
}.items():
    MODELS.register(_name)(_cfg)


def model_config(name: str, **overrides: Any) -> ViTConfig:
    """The named configuration with field overrides (e.g. ``reduce_at``, ``drop_path_rate``)."""
    cfg = MODELS.get(name)
    fields = set(ViTConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown ViT config fields {unknown}; valid: {', '.join(sorted(fields))}")
    if "reduce_at" in overrides:
        overrides["reduce_at"] = tuple(overrides["reduce_at"])
    return replace(cfg, **overrides)


def create_model(name: str, **overrides: Any) -> VisionTransformer:
    """Build a registered ViT, e.g. ``create_model("deit_small_patch16_224", reduce_at=(4, 7, 10))``."""
    return VisionTransformer(model_config(name, **overrides))
