"""Frameworks to visualise: from saved runs (one or several checkpoints) or fresh random weights.

A run folder holds ``checkpoint.pt`` (what :class:`~simprune.train.loop.Trainer` writes); copies
kept along the way (``checkpoint_000500.pt`` ...) can sit next to it. Checkpoints are ordered by the
``step`` saved inside them, not by file name.

Other methods on the same weights: the method only picks the reducer, which has no parameters, so
a framework built with ``method`` overridden loads the run's whole state dict strictly. Only if
that fails (a method with parameters of its own) are the two backbones loaded alone, strictly,
and the skipped keys reported in the trace's notes. The run's ``reducer.options`` belong to its
own method and are dropped for another method, as are its keys that do not apply to the other
method (``make_config`` drops them, e.g. ``reducer.window`` when SimPrune is switched to EViT).

Checkpoint configs are nested (``[reducer]``, ``[teacher]``, ``[<framework>]``); configs saved
before sections existed are read through :func:`~simprune.config.upgrade_saved`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from simprune.checkpoint import CKPT_NAME, load_checkpoint
from simprune.config import ReducerConfig, TrainConfig, flatten, make_config, upgrade_saved
from simprune.run import build_framework


@dataclass
class SavedRun:
    """What a visualisation needs from one checkpoint file."""

    path: Path
    config: dict[str, Any]
    state: dict[str, Any]
    step: int
    total_steps: int

    @property
    def progress(self) -> float:
        """Training progress ``step / total_steps`` in ``[0, 1]``."""
        return min(1.0, max(0.0, self.step / max(1, self.total_steps)))

    @property
    def run_dir(self) -> Path:
        return self.path.parent


def checkpoint_files(path: str | Path) -> list[Path]:
    """Checkpoint files of a path: the file itself, or a folder's ``checkpoint*.pt`` files."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.glob("checkpoint*.pt") if f.is_file())
        if files:
            return files
        raise FileNotFoundError(f"no checkpoint*.pt files in {str(p)!r}; pass a run folder or a "
                                f"checkpoint file")
    raise FileNotFoundError(f"no checkpoint at {str(p)!r}; pass a run folder or a {CKPT_NAME} file")


def load_saved(path: str | Path) -> SavedRun:
    """Read one checkpoint file (config, framework weights, step); the optimizer is dropped."""
    p = Path(path)
    saved = load_checkpoint(p)
    missing = [k for k in ("config", "framework", "step") if k not in saved]
    if missing:
        raise ValueError(f"{str(p)!r} is not a simprune training checkpoint (no {missing})")
    return SavedRun(p, upgrade_saved(saved["config"]), saved["framework"], int(saved["step"]),
                    int(saved.get("total_steps") or 0))


def load_runs(paths: list[str | Path]) -> list[SavedRun]:
    """Every checkpoint under ``paths`` (files or folders), sorted by step, duplicates removed."""
    files: dict[Path, Path] = {}
    for p in paths:
        for f in checkpoint_files(p):
            files.setdefault(f.resolve(), f)
    return sorted((load_saved(f) for f in files.values()), key=lambda r: (r.step, str(r.path)))


def unique_steps(runs: list[SavedRun]) -> tuple[list[SavedRun], list[tuple[SavedRun, SavedRun]]]:
    """Keep the first checkpoint of each step (a run folder's ``checkpoint.pt`` is often a copy of
    its newest ``checkpoint_<step>.pt``); returns ``(kept, [(skipped, kept twin), ...])``."""
    kept: dict[int, SavedRun] = {}
    skipped = []
    for r in runs:
        if r.step in kept:
            skipped.append((r, kept[r.step]))
        else:
            kept[r.step] = r
    return list(kept.values()), skipped


def base_method(base: dict[str, Any], default: str = ReducerConfig.method) -> str:
    """The reduction method a recipe or saved config (nested or flat) names, else ``default``."""
    named = [v for k, v in flatten(base).items() if k in ("method", "reducer.method")]
    return str(named[-1]) if named else default


def config_for(base: dict[str, Any], method: str | None = None,
               overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config of ``base`` (a recipe or saved config) and ``overrides``, with the method
    replaced by ``method`` when given. Switching the method goes through :func:`make_config`: the
    base's keys that do not apply to the new method are dropped, and its reducer options (which
    belong to the old method) are reset."""
    extra = flatten(overrides or {})
    current = base_method(extra, base_method(base))
    if method is not None and method != current:
        extra = {k: v for k, v in extra.items() if k not in ("method", "reducer.method")}
        extra["reducer.method"] = method
        if method != "dense" and not {"reducer_options", "reducer.options"} & set(extra):
            extra["reducer.options"] = {}
    return make_config(base, extra)


def load_state(framework: nn.Module, state: dict[str, Any]) -> list[str]:
    """Load ``state`` strictly, else the two backbones alone; returns notes on what was skipped."""
    try:
        framework.load_state_dict(state)
        return []
    except RuntimeError:
        pass
    for branch in ("student", "teacher"):
        prefix = f"{branch}.backbone."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        getattr(framework, branch)["backbone"].load_state_dict(sub)
    skipped = sorted(k for k in state if ".backbone." not in k)
    mine = set(framework.state_dict())
    fresh = sorted(k for k in mine if ".backbone." not in k and k not in state)
    return [f"loaded the backbones only; skipped {len(skipped)} saved keys ({', '.join(skipped[:4])}"
            f"{' ...' if len(skipped) > 4 else ''}); {len(fresh)} non-backbone keys left at init"]


def framework_from_run(run: SavedRun, method: str | None = None) -> tuple[TrainConfig, nn.Module, list[str]]:
    """The run's framework with its weights, optionally with another method's reducer."""
    cfg = config_for(run.config, method)
    fw = build_framework(cfg)
    notes = load_state(fw, run.state)
    return cfg, fw, notes


def fresh_framework(base: dict[str, Any] | None = None, method: str | None = None,
                    seed: int = 0, overrides: dict[str, Any] | None = None) -> tuple[TrainConfig, nn.Module]:
    """A framework with random weights (seeded), for quick looks without a checkpoint: the config
    of a recipe ``base`` and ``overrides`` (see :func:`config_for`)."""
    import torch

    cfg = config_for(base or {}, method, overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fw = build_framework(cfg)
    return cfg, fw
