"""The training configuration: one flat dataclass, loadable from a TOML recipe, every key
overridable from the command line. Unknown keys are errors that list the valid ones."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class TrainConfig:
    """Every setting of a training run. Progress-based schedules use per-iteration progress."""

    # what to train
    framework: str = "mocov3"  # dino | mocov3
    model: str = "vit_micro_patch4_32"
    init: str = "deit"  # deit | moco: MoCo v3's Xavier init (simprune.models.init)
    pos_embed: str = "learned"  # learned | sincos: fixed 2-D sine-cosine (MoCo v3)
    freeze_patch_embed: bool = False  # MoCo v3's frozen random patch projection
    method: str = "simprune"  # dense | simprune | evit | evit_nofuse | tome | random | mean_sim | attn_topk
    keep_rate: float = 0.8
    reduce_at: list[int] = field(default_factory=lambda: [4, 7, 10])
    window: str = "sliding"
    keep_warmup: list[float] = field(default_factory=lambda: [0.0, 0.0])
    reducer_options: dict[str, Any] = field(default_factory=dict)
    # data
    dataset: str = "cifar10"
    data: str = ""  # folder; empty: $SIMPRUNE_DATA
    test_split: str = "test"  # split used for k-NN / linear evaluation ("val" for ImageNet folders)
    train_subset: int = 0  # 0: all; else a random subset of this size
    global_size: int = 32
    local_size: int = 16
    local_views: int = 0
    global_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    color_ops: bool = True  # colour jitter, grayscale, blur, solarize (False: crop + flip only)
    blur: bool = True  # Gaussian blur as in DINO / MoCo v3 (small images often do better without)
    solarize: bool = True
    # optimisation
    epochs: float = 1.0
    max_steps: int = 0  # 0: epochs decide; else stop after this many steps (schedules still by epochs)
    time_limit: float = 0.0  # minutes per sitting; 0: none. Stops with a checkpoint; schedules unchanged
    batch_size: int = 64  # global batch, split over processes
    lr: float = 1e-3  # at batch 256: lr · batch/256 is applied (DINO's scaling rule) when lr_scale
    lr_scale: bool = False
    min_lr: float = 1e-6
    warmup_frac: float = 0.05
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    drop_path: float = 0.1
    precision: str = "fp32"  # fp32 | bf16 | fp16
    momentum: float = 0.996  # teacher EMA start; cosine to momentum_end
    momentum_end: float = 1.0  # DINO and MoCo v3 end at 1 (a frozen teacher)
    # DINO
    out_dim: int = 4096
    head_hidden: int = 2048
    bottleneck: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_frac: float = 0.0
    center_momentum: float = 0.9
    freeze_last_layer: float = 1.0  # epochs
    # MoCo v3
    moco_dim: int = 256
    moco_hidden: int = 4096
    moco_temperature: float = 0.2
    # run
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    out: str = "runs/default"
    log_every: int = 10
    ckpt_every: int = 100
    keep_every: int = 0  # steps; also keep checkpoint_<step>.pt copies (for `simprune viz`); 0: none
    num_workers: int = 0
    knn_every: float = 0.0  # epochs; 0: only at the end
    knn_train: int = 10000
    knn_test: int = 2000
    knn_k: int = 20
    knn_temperature: float = 0.07
    eval_at_end: bool = True
    linear_probe: bool = False  # also fit a linear probe on the frozen k-NN features at the end
    progress_bar: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: keys that may change when a run resumes (they do not change what is trained)
RESUMABLE_CHANGES = frozenset({
    "data", "test_split", "out", "log_every", "ckpt_every", "keep_every", "num_workers", "knn_every",
    "knn_train", "knn_test", "eval_at_end", "linear_probe", "progress_bar", "device", "max_steps",
    "time_limit",
})


def valid_keys() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def _coerce(name: str, value: Any) -> Any:
    """Parse a command-line string (or check a TOML value) into the field's type."""
    default = getattr(TrainConfig(), name)
    if isinstance(value, str) and not isinstance(default, str):
        text = value
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return text.lower() in ("true", "1", "yes")
            if isinstance(default, int):
                return int(text)
            if isinstance(default, float):
                return float(text)
            if isinstance(default, list):
                cast = type(default[0]) if default else float
                return [cast(v) for v in text.replace(",", " ").split()]
            if isinstance(default, dict):
                import json
                return json.loads(text)
        except ValueError as err:
            raise ValueError(f"config key {name!r}: cannot read {value!r} as "
                             f"{type(default).__name__}") from err
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, list) and isinstance(value, (int, float)):
        return [value]
    expected = type(default)
    if not isinstance(value, expected):
        raise ValueError(f"config key {name!r} must be {expected.__name__}, got {value!r}")
    return value


def make_config(base: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Build a config from a recipe dict and overrides; unknown keys list the valid ones."""
    merged = {**(base or {}), **(overrides or {})}
    unknown = sorted(set(merged) - set(valid_keys()))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; valid keys: {', '.join(valid_keys())}")
    return TrainConfig(**{k: _coerce(k, v) for k, v in merged.items()})


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a TOML recipe (flat table of config keys)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {str(path)!r} not found")
    with path.open("rb") as f:
        data = tomllib.load(f)
    unknown = sorted(set(data) - set(valid_keys()))
    if unknown:
        raise ValueError(f"{path}: unknown config keys {unknown}; valid keys: {', '.join(valid_keys())}")
    return data


def incompatible(saved: dict[str, Any], current: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between a checkpoint's config and ``current`` (beyond the
    keys that may change on resume). A key the checkpoint predates (added to simprune later) counts
    as having its default value, so old runs stay resumable under the settings they had."""
    now = current.to_dict()
    then = {**TrainConfig().to_dict(), **saved}
    keys = (set(then) | set(now)) - RESUMABLE_CHANGES
    return {k: (then.get(k), now.get(k)) for k in sorted(keys) if then.get(k) != now.get(k)}
