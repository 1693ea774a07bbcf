"""Atomic checkpoints: write to a temporary file in the same folder, fsync, then rename.

A checkpoint holds everything needed to continue exactly: model (student and teacher), optimizer,
grad scaler, step, data position, RNG states and the config it was made with.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simprune.atomic import atomic_write

CKPT_NAME = "checkpoint.pt"


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that a crash at any moment leaves the old file or the new
    one, never a partial file."""
    atomic_write(path, lambda f: torch.save(obj, f), mode=0o600)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)
