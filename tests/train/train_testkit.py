"""Training tests run real (tiny) runs on the real CIFAR-10 archive in ``$SIMPRUNE_DATA``
(default ``<repo>/../shared/data``), decoded once into ``$SIMPRUNE_CACHE``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from repo_paths import DATA, REPO  # noqa: F401 - re-exported to the tests

#: a tiny run: 48-wide 12-block ViT/4, 256 random training images, k-NN on small subsets
TINY = {
    "model": "vit_nano_patch4_32", "dataset": "cifar10", "train_subset": 256, "batch_size": 16,
    "epochs": 0.25, "knn_train": 256, "knn_test": 64, "log_every": 1, "ckpt_every": 2,
    "progress_bar": False, "drop_path": 0.0,
}
#: tiny heads per framework (flat aliases), added by :func:`cli_args` for the chosen framework
TINY_HEADS: dict[str, dict[str, object]] = {
    "mocov3": {"moco_hidden": 64, "moco_dim": 32},
    "dino": {"out_dim": 64, "head_hidden": 64, "bottleneck": 16},
    "supervised": {},
}


def with_heads(cfg: dict[str, object]) -> dict[str, object]:
    """``cfg`` plus the tiny head sizes of its framework (MoCo v3 by default), unless given."""
    heads = TINY_HEADS.get(str(cfg.get("framework", "mocov3")), {})
    return {**{k: v for k, v in heads.items() if k not in cfg}, **cfg}


def cli_args(**cfg: object) -> list[str]:
    """``simprune train`` flags for a config dict (tiny heads of its framework added)."""
    out: list[str] = []
    for k, v in with_heads(cfg).items():
        out.append("--" + k.replace("_", "-"))
        out.extend(str(x) for x in v) if isinstance(v, (list, tuple)) else out.append(str(v))
    return out


def run_env(data_root: Path) -> dict[str, str]:
    env = dict(os.environ, SIMPRUNE_DATA=str(data_root), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


PY = sys.executable
