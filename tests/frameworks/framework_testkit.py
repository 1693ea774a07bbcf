"""Shared helpers of the framework tests: a small framework built from config keys, and a seeded
batch of random uint8 images through its augmentation."""

from __future__ import annotations

from typing import Any

import torch

from simprune.config import make_config
from simprune.frameworks import Batch
from simprune.run import build_augment, build_framework, check_config, data_info

#: MAE/PCAE at test size: the 48-wide nano ViT/4 and a 2-block, 16-wide decoder
SMALL_MIM = {"model": "vit_nano_patch4_32", "drop_path": 0.0, "decoder_depth": 2, "decoder_dim": 16,
             "decoder_heads": 2}


def build(keys: dict[str, Any]):  # noqa: ANN201 - (Framework, augment module)
    """The framework of ``keys`` (checked as a run would be) and its augmentation, seeded."""
    cfg = make_config(keys)
    check_config(cfg)
    torch.manual_seed(0)
    data = data_info(cfg)
    fw = build_framework(cfg, data)
    return fw, build_augment(cfg, fw, data)


def random_batch(augment, n: int = 3, seed: int = 0, first_index: int = 0) -> Batch:  # noqa: ANN001
    """``n`` random 32-px images (dataset rows ``first_index ..``) through ``augment``, seeded."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        views = augment(images)
    return Batch(views, torch.zeros(n, dtype=torch.long), torch.arange(first_index, first_index + n))
