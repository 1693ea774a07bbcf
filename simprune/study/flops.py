"""A study cell's training FLOPs as a share of dense, counted on one real training step of the
cell's config (:mod:`simprune.bench.flops`), averaged over training when the keep rate warms up."""

from __future__ import annotations

from simprune.bench.flops import StepCounter, dense_config
from simprune.train.config import TrainConfig


def flops_ratio(cfg: TrainConfig, grid: int = 20) -> float:
    """Training FLOPs of the run ``cfg`` over the same run dense.

    Without a keep-rate warm-up this is one counted step at the end of training; with one
    (``reducer.keep_warmup``) the counted cost is averaged over ``grid`` points of progress.
    """
    if cfg.reducer.method == "dense":
        return 1.0
    dense = StepCounter(dense_config(cfg)).count(1.0).total
    counter = StepCounter(cfg)
    start, end = (list(cfg.reducer.keep_warmup) + [0.0, 0.0])[:2]
    if end <= 0.0:
        return counter.count(1.0).total / dense
    ts = [(i + 0.5) / grid for i in range(grid)]
    return sum(counter.count(t).total for t in ts) / grid / dense


def flops_percent(cfg: TrainConfig) -> float | None:
    """``100 · flops_ratio(cfg)``, or ``None`` where a step cannot be counted."""
    try:
        return 100.0 * flops_ratio(cfg)
    except (ValueError, KeyError, TypeError):
        return None


__all__ = ["flops_percent", "flops_ratio"]
