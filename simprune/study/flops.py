"""A study cell's training FLOPs as a share of dense, counted on one real training step of the
cell's config (:mod:`simprune.bench.flops`), averaged over training when the keep rate warms up, and
scaled by the framework's steps per epoch relative to training on every example
(``Framework.epoch_share``: Tri-Level E-ViT's example level trains fewer steps per epoch)."""

from __future__ import annotations

from simprune.bench.flops import StepCounter, dense_config, reference_config
from simprune.train.config import TrainConfig


def epoch_share(cfg: TrainConfig) -> float:
    """The run's optimiser steps per epoch over those of training on every example (1 unless the
    framework's sample filter trains on a subset)."""
    from simprune.train.loop import FRAMEWORKS

    return float(FRAMEWORKS.get(cfg.framework).epoch_share(cfg))


def flops_ratio(cfg: TrainConfig, grid: int = 20) -> float:
    """Training FLOPs of the run ``cfg`` over the same run dense.

    Without a keep-rate warm-up this is one counted step at the end of training; with one
    (``reducer.keep_warmup``) the counted cost is averaged over ``grid`` points of progress. Both
    are scaled by :func:`epoch_share` (the same epochs in fewer steps).
    """
    share = epoch_share(cfg)
    ref = reference_config(cfg)
    if ref is not None and cfg.reducer.method == "dense":  # MAE, PCAE: vs MAE at mask 0.75
        return StepCounter(cfg).count(1.0).total / StepCounter(ref).count(1.0).total
    if cfg.reducer.method == "dense":
        return share
    dense = StepCounter(dense_config(cfg)).count(1.0).total
    counter = StepCounter(cfg)
    start, end = (list(cfg.reducer.keep_warmup) + [0.0, 0.0])[:2]
    if end <= 0.0:
        return share * counter.count(1.0).total / dense
    ts = [(i + 0.5) / grid for i in range(grid)]
    return share * sum(counter.count(t).total for t in ts) / grid / dense


def flops_percent(cfg: TrainConfig) -> float | None:
    """``100 · flops_ratio(cfg)``, or ``None`` where a step cannot be counted."""
    try:
        return 100.0 * flops_ratio(cfg)
    except (ValueError, KeyError, TypeError):
        return None


__all__ = ["epoch_share", "flops_percent", "flops_ratio"]
