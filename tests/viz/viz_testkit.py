"""Helpers of the visualisation tests: a tiny framework config and fake run folders."""

from __future__ import annotations

from pathlib import Path

import torch

from simprune.config import make_config
from simprune.run import build_framework

#: a tiny DINO on 32-px images (48-wide ViT/4, 64 patches, points at blocks 4/7/10)
#: (flat aliases; only DINO's keys: another framework's section keys are errors)
TINY = {"model": "vit_nano_patch4_32", "framework": "dino", "out_dim": 64, "head_hidden": 64,
        "bottleneck": 16, "local_views": 2, "drop_path": 0.0}


def save_run(folder: Path, step: int, total: int = 100, name: str = "checkpoint.pt", seed: int = 0,
             **overrides) -> Path:
    """A checkpoint file as the trainer writes it (the fields the viewer reads)."""
    cfg = make_config(TINY, overrides)
    torch.manual_seed(seed)
    fw = build_framework(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    torch.save({"config": cfg.to_dict(), "framework": fw.state_dict(), "step": step,
                "total_steps": total}, path)
    return path


def random_image(seed: int = 0, size: int = 32) -> torch.Tensor:
    """uint8 ``[3, size, size]`` noise."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
