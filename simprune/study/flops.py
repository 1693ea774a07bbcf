"""A study cell's training FLOPs as a share of dense, from the analytic FLOPs model
(:func:`simprune.bench.flops.step_report`) applied to the cell's config."""

from __future__ import annotations

from simprune.bench.flops import StepConfig, step_flops, step_report
from simprune.train.config import TrainConfig


def step_config(cfg: TrainConfig, keep_rate: float | None = None) -> StepConfig:
    """The analytic-FLOPs description of one training step of ``cfg`` (two global views, the
    config's local views, heads sized as the config builds them)."""
    dense = cfg.method == "dense"
    return StepConfig(
        model=cfg.model, method=cfg.method, keep_rate=cfg.keep_rate if keep_rate is None else keep_rate,
        framework=cfg.framework, batch_size=cfg.batch_size, global_size=cfg.global_size, num_global=2,
        num_local=cfg.local_views, local_size=cfg.local_size, reduce_at=tuple(cfg.reduce_at),
        reducer_kwargs={} if dense else dict(cfg.reducer_options), head_hidden=cfg.head_hidden,
        head_bottleneck=cfg.bottleneck, out_dim=cfg.out_dim, proj_hidden=cfg.moco_hidden,
        proj_dim=cfg.moco_dim, pred_hidden=cfg.moco_hidden)


def flops_ratio(cfg: TrainConfig, grid: int = 200) -> float:
    """Training FLOPs of the run ``cfg`` over the same run dense.

    Without a keep-rate warm-up this is :func:`step_report`'s ``flops_ratio``; with one
    (``keep_warmup``), the per-step cost is averaged over training progress.
    """
    if cfg.method == "dense":
        return 1.0
    start, end = (list(cfg.keep_warmup) + [0.0, 0.0])[:2]
    if end <= 0.0:
        return float(step_report(step_config(cfg))["flops_ratio"])
    from simprune.reducers import KeepRateSchedule

    schedule = KeepRateSchedule(cfg.keep_rate, start, end)
    cost: dict[float, float] = {}
    total = 0.0
    for i in range(grid):
        rate = round(schedule((i + 0.5) / grid), 6)
        if rate not in cost:
            cost[rate] = step_flops(step_config(cfg, rate)).total
        total += cost[rate]
    return total / grid / step_flops(step_config(cfg).dense()).total


def flops_percent(cfg: TrainConfig) -> float | None:
    """``100 · flops_ratio(cfg)``, or ``None`` where the FLOPs model does not cover the method."""
    try:
        return 100.0 * flops_ratio(cfg)
    except (ValueError, KeyError, TypeError):
        return None


__all__ = ["flops_percent", "flops_ratio", "step_config"]
