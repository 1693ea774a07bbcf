"""A study cell's training FLOPs as a share of dense, counted on one real training step of the
cell's config (:mod:`simprune.bench.flops`), averaged over training when the keep rate warms up, and
scaled by the framework's steps per epoch relative to training on every example
(``Framework.epoch_share``: Tri-Level E-ViT's example level trains fewer steps per epoch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from simprune.bench.flops import StepCounter, dense_config, reference_config
from simprune.config import TrainConfig, planned_steps


def epoch_share(cfg: TrainConfig) -> float:
    """The run's optimiser steps per epoch over those of training on every example (1 unless the
    framework's sample filter trains on a subset)."""
    from simprune.config import FRAMEWORKS

    return float(FRAMEWORKS.get(cfg.framework).epoch_share(cfg))


def step_counter(cfg: TrainConfig) -> StepCounter:
    """A :class:`StepCounter` of ``cfg``; when the config reads a file that is not there yet (a
    distillation teacher before it is trained), one built with the framework's cost-counting
    settings (:meth:`Framework.bench_defaults`: a random frozen teacher of the same architecture),
    which count the same FLOPs."""
    from simprune.config import FRAMEWORKS, make_config

    try:
        return StepCounter(cfg)
    except (FileNotFoundError, ValueError):
        defaults = FRAMEWORKS.get(cfg.framework).bench_defaults(set())
        if not defaults:
            raise
        return StepCounter(make_config(cfg.to_dict(), defaults))


def flops_ratio(cfg: TrainConfig, grid: int = 20) -> float:
    """Training FLOPs of the run ``cfg`` over the same run dense.

    Without a keep-rate warm-up this is one counted step at the end of training; with one
    (``reducer.keep_warmup``) the counted cost is averaged over ``grid`` points of progress. Both
    are scaled by :func:`epoch_share` (the same epochs in fewer steps). A run of no steps (a
    study's random-weights baseline, ``epochs = 0``) costs 0.
    """
    if planned_steps(cfg, 1) == 0:
        return 0.0
    share = epoch_share(cfg)
    ref = reference_config(cfg)
    if ref is not None and cfg.reducer.method == "dense":  # MAE, PCAE: vs MAE at mask 0.75
        return step_counter(cfg).count(1.0).total / step_counter(ref).count(1.0).total
    if cfg.reducer.method == "dense":
        return share
    dense = step_counter(dense_config(cfg)).count(1.0).total
    counter = step_counter(cfg)
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


def logged_flops_percent(folders: Sequence[Path]) -> float | None:
    """A reducer that owns its FLOPs budget (``dynamic_simprune``) keeps as many tokens as its
    trained gates choose, so no step counted from its config says what its runs cost: instead
    ``100 ·`` the mean of the ``flops`` its runs logged (the padded batch's training-FLOPs
    fraction, gates and matching included, patch embedding and heads left out: every
    ``log_every``-th step, the warm-up's included), averaged over the runs in ``folders`` that
    logged one; ``None`` when none did."""
    from simprune.records import read_records

    means = []
    for folder in folders:
        path = Path(folder) / "metrics.jsonl"
        if not path.is_file():
            continue
        vals = [float(r["flops"]) for r, _ in read_records(path) if "flops" in r and "loss" in r]
        if vals:
            means.append(sum(vals) / len(vals))
    return 100.0 * sum(means) / len(means) if means else None


def cell_flops_percent(cfg: TrainConfig, folders: Sequence[Path]) -> float | None:
    """A study cell's training FLOPs (% of dense): counted from its config
    (:func:`flops_percent`), or for a reducer that owns its FLOPs budget the mean its finished
    runs in ``folders`` logged (:func:`logged_flops_percent`)."""
    from simprune.config import owns_flops_budget

    if owns_flops_budget(cfg.reducer.method):
        return logged_flops_percent(folders)
    return flops_percent(cfg)


__all__ = ["cell_flops_percent", "epoch_share", "flops_percent", "flops_ratio",
           "logged_flops_percent", "step_counter"]
