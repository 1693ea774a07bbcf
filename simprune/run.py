"""Run assembly: everything that turns a config into the parts of a run, shared by ``train``,
``bench``, ``viz``, ``study`` and the command line.

- :func:`check_config`: every value checked before anything is built or written (the model's
  sizes, the reducer and its window, precision, run length, evaluation keys, device, and the
  framework's own :meth:`~simprune.frameworks.Framework.check`);
- :func:`data_info`, :func:`load_split`: the facts of the training data and its splits;
- :func:`build_framework`, :func:`build_augment`: the framework and its device augmentation;
- :func:`load_run`: a saved run (config upgraded through the config's aliases, weights loaded).

It sits above ``config/``, ``data/`` and ``frameworks/`` and below ``train/``: it imports nothing
of ``train/``, ``bench/``, ``viz/`` or ``study/``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simprune import dist
from simprune.checkpoint import CKPT_NAME, CheckpointError, load_checkpoint
from simprune.config import TrainConfig, make_config, model_overrides, upgrade_saved
from simprune.config.base import MODEL_SIZE_KEYS
from simprune.data import DATASETS, load_dataset
from simprune.data.datasets import dataset_key
from simprune.data.folder import default_load_size
from simprune.data.loader import resolve_workers
from simprune.data.split import check_split
from simprune.data.stats import dataset_stats
from simprune.finite import describe_nonfinite, nonfinite_names, state_tensors
from simprune.frameworks import FRAMEWORKS, DataInfo, Framework
from simprune.models.init import check_init_options

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def note(msg: str) -> None:
    """One line on stderr (``simprune: note: ...``): something the user should know, not an error."""
    print(f"simprune: note: {msg}", file=sys.stderr, flush=True)


def data_info(cfg: TrainConfig, train_set: Any = None) -> DataInfo:
    """What a framework may know of the training data: classes, size, channels, statistics.

    Without ``train_set`` (cost benchmarks, tests) the data set's registered facts are used.
    """
    mean, std = dataset_stats(cfg.dataset)
    key = cfg.dataset.lower().replace("-", "_")
    spec = DATASETS.get(key) if key in DATASETS else None
    if train_set is not None:
        labels = getattr(train_set, "labels", None)
        classes = getattr(train_set, "classes", None) or []
        n_classes = len(classes) or (int(labels.max()) + 1 if labels is not None and len(labels) else 0)
        n = len(train_set)
    else:
        n_classes, n = (spec.n_classes if spec is not None and spec.n_classes else 10), 0
    return DataInfo(cfg.dataset, n_classes, n, has_labels=n_classes > 0, in_chans=len(mean),
                    mean=tuple(mean), std=tuple(std))


def build_framework(cfg: TrainConfig, data: DataInfo | None = None) -> Framework:
    """The framework (branches, teacher, heads) a config describes."""
    return FRAMEWORKS.get(cfg.framework).build(cfg, data or data_info(cfg))


def load_run(ckpt: str | Path) -> tuple[TrainConfig, Framework, dict[str, Any]]:
    """A finished or partial run, for evaluation or export: ``(config, framework with the saved
    weights, the checkpoint dict)``. ``ckpt``: a run folder or its ``checkpoint.pt``.

    Raises:
        FileNotFoundError: no checkpoint there (the message says what to pass).
        CheckpointError: the file is damaged, or its weights hold NaN or inf (a run never writes
            one; a file changed on disk or written elsewhere would give meaningless features).
    """
    path = Path(ckpt)
    if path.is_dir():
        path = path / CKPT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; pass a run folder or checkpoint.pt")
    saved = load_checkpoint(path)
    bad = nonfinite_names(state_tensors(saved["framework"], None))
    if bad:
        raise CheckpointError(path, f"holds NaN or inf weights (step {saved['step']}; in "
                                    f"{describe_nonfinite(bad)}): it cannot be evaluated, exported "
                                    "or fine-tuned")
    cfg = make_config(upgrade_saved(saved["config"]))
    fw = build_framework(cfg)
    fw.load_state_dict(saved["framework"])
    return cfg, fw, saved


def build_augment(cfg: TrainConfig, framework: Framework, data: DataInfo | None = None) -> nn.Module:
    return framework.build_augment(cfg, data or data_info(cfg))


def load_split(cfg: TrainConfig, root: Path, split: str) -> Any:
    """A split of the run's data set with the loader options the recipe implies: an image folder
    is decoded at ``load_size`` (0: ``ceil(global_size * 256 / 224)``), cached when it fits
    ``$SIMPRUNE_CACHE_MB``, with a progress bar when ``progress_bar``."""
    options: dict[str, Any] = {}
    if dataset_key(cfg.dataset) == "imagefolder":
        options = {"load_size": cfg.load_size or default_load_size(cfg.global_size),
                   "progress": bool(cfg.progress_bar and dist.is_main()),
                   "workers": resolve_workers(cfg.num_workers)}
    return load_dataset(cfg.dataset, root, split, **options)


def check_model(cfg: TrainConfig) -> Any:
    """The ``ViTConfig`` the run builds (named model + sizes), after checking that the sizes fit
    together; a ``ValueError`` names the keys, their values and what would be valid."""
    from simprune.models import MODELS, model_config
    from simprune.models.vit import check_reduce_at

    preset = MODELS.get(cfg.model)  # unknown: lists the named models
    for key in MODEL_SIZE_KEYS:
        value = getattr(cfg, key)
        if value < 0:
            raise ValueError(f"{key} must be >= 1, or 0 for the model's ({getattr(preset, key)}), "
                             f"got {value}")
    if cfg.global_size < 1:
        raise ValueError(f"global_size must be >= 1 (px), got {cfg.global_size}")
    if cfg.load_size < 0:
        raise ValueError(f"load_size must be >= 1 (px), or 0 for ceil(global_size * 256 / 224), "
                         f"got {cfg.load_size}")
    vc = model_config(cfg.model, **model_overrides(cfg))
    p = vc.patch_size
    whose = "" if cfg.patch_size else f" (model {cfg.model}'s)"
    if cfg.global_size % p:
        lo, hi = cfg.global_size // p * p, (cfg.global_size // p + 1) * p
        raise ValueError(f"global_size {cfg.global_size} is not a multiple of patch_size {p}{whose}; "
                         f"valid: multiples of {p}, e.g. {', '.join(str(v) for v in (lo, hi) if v)}, "
                         "or another patch_size")
    local = getattr(cfg.fw, "local_size", None)
    if isinstance(local, int) and local > 0 and getattr(cfg.fw, "local_views", 1) and local % p:
        raise ValueError(f"{cfg.framework}.local_size {local} is not a multiple of patch_size {p}"
                         f"{whose}; valid: multiples of {p}")
    if vc.embed_dim % vc.num_heads:
        heads = [h for h in range(1, min(vc.embed_dim, 32) + 1) if vc.embed_dim % h == 0]
        raise ValueError(f"embed_dim {vc.embed_dim} is not divisible by num_heads {vc.num_heads}; "
                         f"valid num_heads: {', '.join(map(str, heads))}")
    if cfg.reducer.method != "dense":
        try:
            check_reduce_at(cfg.reducer.reduce_at, vc.depth)
        except ValueError as err:
            raise ValueError(f"reducer.reduce_at {list(cfg.reducer.reduce_at)} does not fit depth "
                             f"{vc.depth}: {err}") from err
    return vc


def size_note(cfg: TrainConfig) -> str | None:
    """A line saying that the model sees another patch grid than its preset was made for
    (``global_size`` differs from the named model's image size and no patch size is given), or
    ``None``."""
    from simprune.models import MODELS

    if cfg.model not in MODELS or cfg.patch_size:
        return None
    preset = MODELS.get(cfg.model)
    if cfg.global_size == preset.img_size or cfg.global_size % preset.patch_size:
        return None
    grid, made = cfg.global_size // preset.patch_size, preset.img_size // preset.patch_size
    note = (f"model {cfg.model} is made for {preset.img_size}-px images ({made}x{made} = "
            f"{made * made} tokens); at global_size {cfg.global_size} it sees {grid}x{grid} = "
            f"{grid * grid} patch tokens of {preset.patch_size} px")
    if cfg.global_size % made == 0:
        want = cfg.global_size // made
        note += f"; for {made * made} tokens set patch_size {want} (--patch-size {want})"
    return note


def check_config(cfg: TrainConfig) -> None:
    """Fail fast, before any file is written, on values that cannot work."""
    from simprune.reducers import REDUCERS
    from simprune.reducers.schedule import WINDOWS
    from simprune.tokens import check_keep_rate

    fw = FRAMEWORKS.get(cfg.framework)
    check_model(cfg)
    rc = cfg.reducer
    if rc.method != "dense":
        if rc.method not in REDUCERS:
            import difflib

            known = ["dense", *REDUCERS.names()]
            close = difflib.get_close_matches(rc.method, known, n=1)
            raise ValueError(f"unknown reduction method {rc.method!r}; known: {', '.join(known)}."
                             + (f" Did you mean {close[0]!r}?" if close else ""))
        check_keep_rate(rc.keep_rate, "reducer.keep_rate")
        WINDOWS.get(rc.window)
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision {cfg.precision!r}; valid: {', '.join(PRECISIONS)}")
    check_init_options(getattr(cfg.fw, "init", "deit"), cfg.pos_embed)
    check_optim_settings(cfg)
    if cfg.epochs < 0 or cfg.batch_size < 1:
        raise ValueError(f"epochs must be >= 0 and batch_size >= 1, got {cfg.epochs}, {cfg.batch_size}")
    for key in ("steps", "images_seen"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"{key} must be >= 1, or 0 when the run length is given otherwise, got "
                             f"{getattr(cfg, key)}")
    for key in ("log_every", "ckpt_every"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be >= 1 (steps), got {getattr(cfg, key)}")
    for key in ("keep_every", "max_steps", "train_subset"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"{key} must be >= 0, got {getattr(cfg, key)}")
    resolve_workers(cfg.num_workers)
    check_split(cfg.held_out, cfg.train_on)
    if cfg.time_limit < 0:
        raise ValueError(f"time_limit must be >= 0 minutes (0: none), got {cfg.time_limit}")
    check_eval_settings(cfg)
    check_device(cfg.device)
    fw.check(cfg)


def check_eval_settings(cfg: TrainConfig) -> None:
    """The evaluation keys (checked before the first step, and by ``simprune eval``)."""
    for key in ("knn_k", "knn_train", "knn_test"):
        if getattr(cfg, key) < (1 if key == "knn_k" else 0):
            raise ValueError(f"{key} must be >= {1 if key == 'knn_k' else 0}, got {getattr(cfg, key)}")
    if not cfg.knn_temperature > 0:
        raise ValueError(f"knn_temperature must be > 0, got {cfg.knn_temperature}")
    if cfg.knn_every < 0:
        raise ValueError(f"knn_every must be >= 0 epochs (0: only at the end), got {cfg.knn_every}")
    if not cfg.test_split:
        raise ValueError("test_split must name the split to evaluate on (e.g. 'test' or 'val')")


def check_device(device: str) -> None:
    """``auto``, ``cpu`` or a device this machine has (``cuda`` needs a GPU torch can see)."""
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device name torch knows; use auto, cpu, cuda "
                         "or cuda:<index>") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: torch sees no CUDA GPU on this machine "
                             "(torch.cuda.is_available() is False); use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                             "GPU(s)")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"device {device!r}: MPS is not available here; use --device cpu (or auto)")
    elif dev.type != "cpu":
        raise ValueError(f"device {device!r}: simprune trains on auto, cpu, cuda or mps")


def build_optimizer(cfg: TrainConfig, framework: Framework) -> torch.optim.Optimizer:
    """AdamW over the framework's parameter groups (weight decay on weights only) at the config's
    base learning rate and weight decay; the trainer sets both per step (:func:`set_hparams`)."""
    return torch.optim.AdamW(framework.param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def check_optim_settings(cfg: TrainConfig) -> None:
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
    """This step's learning rate, and weight decay on the groups that take it."""
    for g in opt.param_groups:
        g["lr"] = lr
        if g.get("apply_wd", False):
            g["weight_decay"] = weight_decay
