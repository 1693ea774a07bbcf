"""AdamW with weight decay on weights only, and cosine schedules with a linear warm-up."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups: decayed weights, and biases/norm parameters (1-d) with no decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "weight_decay": 0.0,
                                                  "apply_wd": False}]


def cosine(start: float, end: float, t: float) -> float:
    """Cosine from ``start`` (t=0) to ``end`` (t=1)."""
    t = min(max(t, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def lr_at(t: float, base: float, min_lr: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` of training, then cosine to ``min_lr``."""
    if warmup > 0 and t < warmup:
        return base * t / warmup
    return cosine(base, min_lr, (t - warmup) / max(1e-12, 1.0 - warmup))


def check_optim_settings(cfg: Any) -> None:
    """The optimiser's keys, before the first step: one line naming the key and its valid range
    (torch's own check names no key: "Invalid learning rate: -1")."""
    for key in ("lr", "min_lr", "weight_decay", "weight_decay_end", "clip_grad"):
        value = getattr(cfg, key)
        if not (math.isfinite(value) and value >= 0):
            what = " (0: no clipping)" if key == "clip_grad" else ""
            raise ValueError(f"{key} must be a finite number >= 0{what}, got {value}")
    if not 0.0 <= cfg.warmup_frac < 1.0:
        raise ValueError(f"warmup_frac must be in [0, 1) (the part of training spent warming up), "
                         f"got {cfg.warmup_frac}")


def set_hparams(opt: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
        if g.get("apply_wd", False):
            g["weight_decay"] = weight_decay
