"""The training configuration: a small base plus one section per component.

A recipe (TOML) has the base keys at the top level (what to train on, how to optimise, how the run
is kept and evaluated) and one table per component::

    framework = "mocov3"          # base keys: model, dataset, optimisation, run, evaluation
    model = "vit_micro_patch4_32"
    [reducer]                     # how tokens are reduced (simprune.reducers)
    method = "simprune"
    keep_rate = 0.8
    [teacher]                     # the teacher branch (simprune.teachers)
    momentum = 0.99
    [mocov3]                      # the framework's own section (simprune.frameworks)
    hidden = 1024

Each section is a dataclass owned by its component: the framework's ``Config``, the reducer
section :class:`ReducerConfig` and the teacher section :class:`TeacherConfig`. A key that does not
apply to the chosen components (another framework's key, a SimPrune window for EViT, an EMA
momentum for a run without a teacher) is an error that names the section it belongs to.

Overrides use dotted keys (``reducer.keep_rate``) or the flat aliases that name every section key
by itself (``keep_rate``, ``window``, ``student_temp``; MoCo v3's keys keep their ``moco_`` prefix).
When an override switches the framework or the reduction method, the recipe's keys for the
component it replaced are dropped, and :attr:`TrainConfig.notes` says which.

The model: ``model`` names a preset (:mod:`simprune.models.configs`); ``patch_size``,
``embed_dim``, ``depth`` and ``num_heads`` override its sizes (0 keeps the preset's), and the image
size is ``global_size`` (the training crop, the model's input and the evaluation size), so
``model = "vit_micro_patch4_32"``, ``global_size = 64``, ``patch_size = 8`` is a 64-token ViT for
64-px images. Run length: a recipe gives one of ``epochs``, ``steps`` and ``images_seen`` (two in
one recipe, or both on the command line, are an error); one given on the command line replaces the
recipe's, with a note. The checkpoint records only the one in use.

Why ``[mocov3]`` and not ``[framework.mocov3]``: TOML cannot have ``framework = "mocov3"`` and a
``[framework.mocov3]`` table in one file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from simprune.config.toml import read_toml
from simprune.registry import Registry

#: Every training framework by name (``simprune.frameworks``; ``Framework`` subclasses). The
#: registry lives here, below the frameworks, because the config reads what each framework declares
#: about its keys (its section ``Config``, ``default_teacher``, ``eval_protocol``); the frameworks
#: fill it when ``simprune.frameworks`` is imported, which reading it does first.
FRAMEWORKS: Registry[Any] = Registry("framework", fill="simprune.frameworks")


@dataclass
class ReducerConfig:
    """``[reducer]``: which tokens each branch keeps, where and how many.

    Attributes:
        method: ``dense`` or a registered reducer (``simprune``, ``evit``, ``tome``, ...).
        keep_rate: keep rate per reduction point.
        flops_budget: a training-FLOPs budget as a fraction of dense (0: none). The command line
            and the study solve the keep rate from it before the run starts
            (:func:`simprune.bench.budget.apply_flops_budget`); a reducer that takes the budget
            itself (``owns_flops_budget``) reads it instead.
        reduce_at: 1-indexed blocks where tokens are reduced (0: after the patch embedding).
        window: a pair reducer's window schedule (SimPrune: ``sliding``, ``prune_similar``, ...).
        keep_warmup: ``(start, end)`` progress of the keep-rate warm-up (``(0, 0)``: none).
        keep_ramp: the warm-up's shape: ``cosine`` (EViT's) or ``linear`` (PCAE's fine-tuning).
        options: extra options of the reducer (e.g. ``{"metric": "keys"}`` for SimPrune).
        branches: ``both`` (a one-branch reducer runs on each branch, as the SimPrune paper applies
            EViT and ToMe to SSL) or ``student`` (the teacher stays dense). A pair reducer always
            reduces both branches together.
    """

    method: str = "dense"
    keep_rate: float = 0.8
    flops_budget: float = 0.0
    reduce_at: list[int] = field(default_factory=lambda: [4, 7, 10])
    window: str = "sliding"
    keep_warmup: list[float] = field(default_factory=lambda: [0.0, 0.0])
    keep_ramp: str = "cosine"
    options: dict[str, Any] = field(default_factory=dict)
    branches: str = "both"


@dataclass
class TeacherConfig:
    """``[teacher]``: the branch the student learns from.

    Attributes:
        kind: ``ema`` (a moving average of the student), ``frozen`` (loaded from ``path``) or
            ``none``; empty: the framework's default.
        momentum, momentum_end: the EMA momentum's cosine schedule (``ema``).
        path: a simprune run folder, ``checkpoint.pt`` or timm-named ``.safetensors`` (``frozen``).
        model: the frozen teacher's architecture (a registered model name) when ``path`` is a
            weights file; a run folder records its own.
    """

    kind: str = ""
    momentum: float = 0.996
    momentum_end: float = 1.0
    path: str = ""
    model: str = ""


#: which teacher keys apply to which kind
TEACHER_KEYS = {"momentum": ("ema",), "momentum_end": ("ema",), "path": ("frozen",), "model": ("frozen",)}
#: base keys of an evaluation protocol, which apply only to the frameworks whose ``eval_protocol``
#: it is (``knn``: weighted k-NN and the linear probe on frozen features); ``knn_test``,
#: ``knn_every`` and ``eval_at_end`` apply to every protocol (``classify`` counts its test images
#: with ``knn_test``)
EVAL_KEYS = {"knn_train": "knn", "knn_k": "knn", "knn_temperature": "knn", "linear_probe": "knn"}
#: what each evaluation protocol is, for the messages
EVAL_NAMES = {"knn": "k-NN and linear probe on frozen features",
              "classify": "top-1/top-5 of its classifier on test_split"}


@dataclass
class TrainConfig:
    """Every setting of a training run. Progress-based schedules use per-iteration progress."""

    # what to train
    framework: str = "mocov3"  # a registered framework: dino | mocov3 | supervised
    model: str = "vit_micro_patch4_32"  # a named model: the preset of the four sizes below
    patch_size: int = 0  # 0: the model's. The image size is global_size: global_size/patch_size
    embed_dim: int = 0  # width; 0: the model's
    depth: int = 0  # blocks; 0: the model's
    num_heads: int = 0  # attention heads (must divide embed_dim); 0: the model's
    pos_embed: str = "learned"  # learned | sincos: fixed 2-D sine-cosine (MoCo v3, MAE, PCAE)
    # data
    dataset: str = "cifar10"
    data: str = ""  # folder; empty: $SIMPRUNE_DATA
    test_split: str = "test"  # split used for evaluation ("val" for ImageNet folders)
    train_subset: int = 0  # 0: all; else a random subset of this size (of the train_on part)
    held_out: int = 0  # hold this many training images out (a fixed draw; simprune.data.split)
    train_on: str = "rest"  # with held_out > 0: rest | held_out, the part trained on
    global_size: int = 32  # the image size (px): training crops, the model's input, evaluation
    load_size: int = 0  # imagefolder decode size (px); 0: ceil(global_size * 256 / 224)
    global_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    # optimisation; the run length is one of epochs, steps and images_seen
    epochs: float = 1.0  # passes over the (subset of the) training set
    steps: int = 0  # optimiser steps; 0: not given
    images_seen: int = 0  # training images (steps = ceil(images_seen / batch_size)); 0: not given
    max_steps: int = 0  # 0: the run length decides; else stop early at this step (schedules unchanged)
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
    # run
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    out: str = "runs/default"
    log_every: int = 10
    ckpt_every: int = 100
    keep_every: int = 0  # steps; also keep checkpoint_<step>.pt copies (for `simprune viz`); 0: none
    num_workers: int = -1  # loader worker processes; -1: one per free core (simprune.data.loader)
    # evaluation (the framework's protocol: k-NN for SSL, top-1 on the test split for supervised);
    # knn_train, knn_k, knn_temperature and linear_probe apply only to the knn protocol (EVAL_KEYS)
    knn_every: float = 0.0  # epochs; 0: only at the end
    knn_train: int = 10000
    knn_test: int = 2000
    knn_k: int = 20
    knn_temperature: float = 0.07
    eval_at_end: bool = True
    linear_probe: bool = False  # also fit a linear probe on the frozen k-NN features at the end
    progress_bar: bool = True
    # sections
    reducer: ReducerConfig = field(default_factory=ReducerConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    #: the framework's own section (an instance of its ``Config``); built by :func:`make_config`
    fw: Any = None
    #: what :func:`make_config` dropped when an override switched a component (not saved)
    notes: list[str] = field(default_factory=list, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The nested form a recipe or a checkpoint holds (base keys, then one table per section)."""
        out = {f.name: dataclasses.asdict(getattr(self, f.name)) if f.name in ("reducer", "teacher")
               else getattr(self, f.name) for f in fields(self) if f.name not in ("fw", "notes")}
        out = json.loads(json.dumps(out))  # deep copy, lists not tuples
        active = run_length_key(self)
        for key in RUN_LENGTH:  # only the run length in use, as a recipe gives it
            if key != active:
                del out[key]
        out[self.framework] = dataclasses.asdict(self.fw) if self.fw is not None else {}
        for section in ("reducer", "teacher"):  # only the keys that apply
            out[section] = {k: v for k, v in out[section].items() if not _not_applicable(
                f"{section}.{k}", self.framework, self.reducer.method, self.teacher.kind)}
        for key in EVAL_KEYS:
            if _not_applicable(key, self.framework, self.reducer.method, self.teacher.kind):
                del out[key]
        return out

    def get(self, key: str) -> Any:
        """A value by dotted key (``reducer.keep_rate``, ``dino.student_temp``) or base key."""
        section, _, leaf = key.rpartition(".")
        if not section:
            return getattr(self, key)
        obj = self.fw if section == self.framework else getattr(self, section)
        return getattr(obj, leaf)


#: ``--help`` texts of base keys (the others show their default only)
KEY_HELP = {
    "model": "a named model (simprune.models.MODELS), the preset of patch_size, embed_dim, depth "
             "and num_heads",
    "patch_size": "patch side in px (0: the model's); the model sees (global_size/patch_size)^2 "
                  "patch tokens",
    "embed_dim": "model width (0: the model's)",
    "depth": "transformer blocks (0: the model's)",
    "num_heads": "attention heads, must divide embed_dim (0: the model's)",
    "dataset": "cifar10 | cifar100 | fashion_mnist | imagefolder",
    "data": "data folder (empty: $SIMPRUNE_DATA)",
    "test_split": "split evaluated on (imagefolder: any sub-folder of the data folder, e.g. val)",
    "train_subset": "train on a random subset of this many images (0: all; at most the split's size)",
    "held_out": "hold a fixed random draw of this many training images out of training; the k-NN "
                "bank and linear probe draw from them (0: none)",
    "train_on": "with held_out > 0, the part trained on: rest (the other images) or held_out",
    "global_size": "image size in px: the training crops, the model's input and evaluation",
    "load_size": "imagefolder: decode images at this size in px (shorter side, centre crop; 0: "
                 "ceil(global_size*256/224))",
    "epochs": "run length in passes over the training set (give one of epochs, steps, images_seen)",
    "steps": "run length in optimiser steps (instead of epochs; 0: not given)",
    "images_seen": "run length in training images, ceil(images_seen/batch_size) steps (instead of "
                   "epochs; 0: not given)",
    "max_steps": "stop early at this step; schedules keep the full run length (0: none)",
    "num_workers": "worker processes that decode and crop the batches of a split that is not cached "
                   "(a large image folder, tar shards); 0: in the training process; -1 (default): "
                   "one per free core",
    "progress_bar": "tqdm bars for training, evaluation and dataset caching (false: log lines only)",
    "framework": "the training framework (its section [<framework>] holds its own keys)",
    "pos_embed": "position embedding: learned, or sincos (fixed 2-D sine-cosine: MoCo v3, MAE, PCAE)",
    "global_scale": "random-resized-crop area range of the global views (fractions of the image)",
    "time_limit": "minutes per sitting; stops with a checkpoint, schedules unchanged (0: none)",
    "batch_size": "global batch (images per optimiser step), split over processes",
    "lr": "base learning rate at batch 256 when lr_scale (lr * batch_size/256), else as given",
    "lr_scale": "scale lr by batch_size/256 (DINO's rule)",
    "min_lr": "learning rate at the end of the cosine schedule",
    "warmup_frac": "share of training with a linear learning-rate warm-up",
    "weight_decay": "AdamW weight decay at the start (weights only, not biases or norms)",
    "weight_decay_end": "weight decay at the end (cosine from weight_decay)",
    "clip_grad": "clip the gradient norm at this value (0: no clipping)",
    "drop_path": "stochastic depth rate of the backbone",
    "precision": "fp32, bf16 or fp16 (autocast; fp16 with a gradient scaler)",
    "seed": "seed of initialisation, data order, augmentation and masking",
    "deterministic": "deterministic torch algorithms (slower; bitwise-repeatable runs)",
    "device": "auto, cpu, cuda, cuda:<index> or mps",
    "out": "run folder: checkpoint.pt, config.json, metrics.jsonl, results.json",
    "log_every": "steps between log lines (and the non-finite-loss check)",
    "ckpt_every": "steps between checkpoints",
    "keep_every": "also keep checkpoint_<step>.pt copies every this many steps, for viz (0: none)",
    "knn_every": "evaluate every this many epochs during training (0: only at the end)",
    "knn_train": "k-NN bank and linear-probe training images (0: all)",
    "knn_test": "test images evaluated, k-NN or top-1 (0: all)",
    "knn_k": "neighbours of the weighted k-NN",
    "knn_temperature": "temperature of the weighted k-NN's votes",
    "eval_at_end": "evaluate when training ends",
    "linear_probe": "also fit a linear probe on the frozen k-NN features at the end",
}

#: the keys that give a run's length; a recipe (and the command line) gives at most one
RUN_LENGTH = ("epochs", "steps", "images_seen")
#: base keys that override the named model's sizes (0: the model's)
MODEL_SIZE_KEYS = ("patch_size", "embed_dim", "depth", "num_heads")


def run_length_key(cfg: TrainConfig) -> str:
    """The run-length key in use: ``steps`` or ``images_seen`` when set (non-zero), else ``epochs``."""
    return "steps" if cfg.steps else "images_seen" if cfg.images_seen else "epochs"


def planned_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The run's length in optimiser steps (schedules span it): ``steps``, or
    ``ceil(images_seen / batch_size)``, or ``ceil(epochs * steps_per_epoch)``."""
    if cfg.steps:
        return int(cfg.steps)
    if cfg.images_seen:
        return math.ceil(cfg.images_seen / cfg.batch_size)
    return int(math.ceil(cfg.epochs * steps_per_epoch))


def model_overrides(cfg: TrainConfig) -> dict[str, int]:
    """The fields of the named model's ``ViTConfig`` that the config sets: ``img_size`` (always
    ``global_size``) and the non-zero sizes of :data:`MODEL_SIZE_KEYS`."""
    out = {"img_size": cfg.global_size}
    out.update({k: getattr(cfg, k) for k in MODEL_SIZE_KEYS if getattr(cfg, k)})
    return out


SECTION_CLASSES = {"reducer": ReducerConfig, "teacher": TeacherConfig}
BASE_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("reducer", "teacher", "fw", "notes"))

#: keys that may change when a run resumes (they do not change what is trained)
RESUMABLE_CHANGES = frozenset({
    "data", "test_split", "out", "log_every", "ckpt_every", "keep_every", "num_workers", "knn_every",
    "knn_train", "knn_test", "knn_k", "knn_temperature", "eval_at_end", "linear_probe",
    "progress_bar", "device", "max_steps", "time_limit",
})


def framework_sections() -> dict[str, type]:
    """Every registered framework's section dataclass, by framework name."""
    return {name: FRAMEWORKS.get(name).Config for name in FRAMEWORKS.names()}


def aliases() -> dict[str, str]:
    """Flat name -> dotted key for every section key (``keep_rate`` -> ``reducer.keep_rate``)."""
    out: dict[str, str] = {}
    for section, cls in {**SECTION_CLASSES, **framework_sections()}.items():
        prefix = getattr(cls, "alias_prefix", "")
        for flat, leaf in getattr(cls, "flat_aliases", {}).items():
            out[flat] = f"{section}.{leaf}"
        for f in fields(cls):
            flat = (prefix + f.name) if prefix else f.name
            if section == "reducer" and f.name == "options":
                flat = "reducer_options"
            if section == "teacher" and f.name in ("kind", "path", "model"):
                flat = f"teacher_{f.name}"
            if flat in out and out[flat] != f"{section}.{f.name}":
                # the same name in two framework sections: both aliases point to "the active one"
                out[flat] = f"*.{f.name}"
            else:
                out[flat] = f"{section}.{f.name}"
    return out


def valid_keys() -> list[str]:
    """Every key a recipe or an override may set: base keys and dotted section keys."""
    keys = list(BASE_KEYS)
    for section, cls in {**SECTION_CLASSES, **framework_sections()}.items():
        keys += [f"{section}.{f.name}" for f in fields(cls)]
    return keys


def flatten(nested: dict[str, Any]) -> dict[str, Any]:
    """A recipe's nested tables -> dotted keys (``{"reducer": {"keep_rate": 0.8}}`` ->
    ``{"reducer.keep_rate": 0.8}``); flat aliases are resolved later."""
    sections = {**SECTION_CLASSES, **framework_sections()}
    out: dict[str, Any] = {}
    for k, v in nested.items():
        if k in sections and isinstance(v, dict):
            for leaf, val in v.items():
                out[f"{k}.{leaf}"] = val
        else:
            out[k] = v
    return out


def _section_of(key: str) -> str:
    return key.rpartition(".")[0]


def _alias_target(key: str, framework: str, table: dict[str, str]) -> str:
    """The dotted key a flat alias stands for (``*.`` aliases: the running framework's section);
    other keys unchanged."""
    target = table.get(key, key)
    if not target.startswith("*."):
        return target
    leaf, sections = target[2:], framework_sections()
    owners = [s for s, cls in sections.items() if leaf in {f.name for f in fields(cls)}]
    # the running framework's key; else the first section that has it (then refused, named)
    return f"{framework}.{leaf}" if framework in owners or not owners else f"{owners[0]}.{leaf}"


def _resolve(flat: dict[str, Any], framework: str, where: str) -> dict[str, Any]:
    """Flat aliases -> dotted keys, unknown keys -> an error listing where keys live."""
    table = aliases()
    sections = {**SECTION_CLASSES, **framework_sections()}
    out: dict[str, Any] = {}
    for k, v in flat.items():
        if k in BASE_KEYS:
            out[k] = v
            continue
        if k in table:
            out[_alias_target(k, framework, table)] = v
            continue
        section, _, leaf = k.rpartition(".")
        if section in sections and leaf in {f.name for f in fields(sections[section])}:
            out[k] = v
            continue
        if section in sections:
            valid = ", ".join(f.name for f in fields(sections[section]))
            raise ValueError(f"{where}unknown key {leaf!r} in [{section}]; valid: {valid}")
        import difflib

        table_name = k if isinstance(v, dict) else section  # a [table] or a dotted key's section
        if table_name:
            close = difflib.get_close_matches(table_name, list(sections), n=1)
            hint = f" Did you mean [{close[0]}]?" if close else ""
            raise ValueError(f"{where}unknown section [{table_name}].{hint} Sections: "
                             f"{', '.join('[' + s + ']' for s in sections)}")

        close = difflib.get_close_matches(k, [*BASE_KEYS, *table], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{where}unknown config key {k!r}.{hint} Base keys: {', '.join(BASE_KEYS)}; "
                         f"sections: {', '.join('[' + s + ']' for s in sections)} "
                         "(`simprune train --help` lists every key)")
    return out


def owns_flops_budget(method: str) -> bool:
    """Whether reducer ``method`` takes ``reducer.flops_budget`` itself (no keep rate to solve)."""
    from simprune.reducers import REDUCERS

    return method in REDUCERS and bool(getattr(REDUCERS.get(method), "owns_flops_budget", False))


def _is_pair(method: str) -> bool:
    from simprune.reducers import REDUCERS

    return method != "dense" and method in REDUCERS and REDUCERS.get(method).is_pair


def _not_applicable(key: str, framework: str, method: str, teacher_kind: str) -> str | None:
    """Why ``key`` does not apply to these components (``None`` if it does)."""
    section, _, leaf = key.rpartition(".")
    if section == "reducer":
        if method == "dense" and leaf not in ("method",):
            return f"'{key}' configures token reduction, but method is 'dense'"
        if leaf == "window" and not _is_pair(method):
            return (f"'{key}' is the window of a pair reducer (simprune), but method is {method!r}, "
                    "a one-branch reducer")
        return None
    if section == "teacher":
        if teacher_kind == "none" and leaf != "kind":
            return f"'{key}' configures the teacher, but this run has none (framework {framework!r})"
        kinds = TEACHER_KEYS.get(leaf)
        if kinds and teacher_kind not in kinds:
            return f"'{key}' applies to a {'/'.join(kinds)} teacher, but the teacher is {teacher_kind!r}"
        return None
    if section and section != framework:
        return (f"'{key}' belongs to section [{section}] (framework {section!r}), but framework is "
                f"{framework!r}")
    if not section and key in EVAL_KEYS:
        protocol, own = EVAL_KEYS[key], FRAMEWORKS.get(framework).eval_protocol
        if own != protocol:
            users = [n for n in FRAMEWORKS.names() if FRAMEWORKS.get(n).eval_protocol == protocol]
            return (f"'{key}' belongs to the {protocol} evaluation ({EVAL_NAMES.get(protocol, protocol)}"
                    f"; frameworks {', '.join(users)}), but framework {framework!r} evaluates by "
                    f"{own} ({EVAL_NAMES.get(own, own)})")
    return None


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Parse a command-line string (or check a TOML value) into the type of ``default``."""
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
                return json.loads(text)
        except ValueError as err:
            raise ValueError(f"config key {name!r}: cannot read {value!r} as "
                             f"{type(default).__name__}") from err
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, list) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    expected = type(default)
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
        raise ValueError(f"config key {name!r} must be {expected.__name__}, got {value!r}")
    return value


def _run_length_given(layer: dict[str, Any], where: str) -> list[str]:
    """The run-length keys a recipe or the command line gives (``steps``/``images_seen`` of 0 count
    as not given); two at once are an error."""
    def given(k: str) -> bool:
        if k not in layer:
            return False
        if k == "epochs":
            return True
        try:
            return float(layer[k]) != 0
        except (TypeError, ValueError):
            return True  # not a number: _coerce names it
    keys = [k for k in RUN_LENGTH if given(k)]
    if len(keys) > 1:
        both = " and ".join(f"{k} = {layer[k]}" for k in keys)
        raise ValueError(f"{where}give one run length, got {both}; valid: epochs (passes over the "
                         "training set), steps (optimiser steps) or images_seen (training images)")
    return keys


def _default_teacher(framework: str) -> str:
    return FRAMEWORKS.get(framework).default_teacher


def make_config(base: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                where: str = "") -> TrainConfig:
    """Build a config from a recipe (nested or flat) and overrides (flat aliases or dotted keys).

    Raises ``ValueError`` for unknown keys and for keys that do not apply to the chosen framework,
    reducer or teacher (naming the section they belong to). When ``overrides`` switches the
    framework, the method or the teacher kind, the recipe's keys that only applied to the old one
    are dropped and listed in ``notes``.
    """
    base_flat, over_flat = flatten(base or {}), flatten(overrides or {})
    framework = str(over_flat.get("framework", base_flat.get("framework", TrainConfig.framework)))
    FRAMEWORKS.get(framework)  # unknown framework: KeyError listing the known ones
    base_k = _resolve(base_flat, framework, where)
    over_k = _resolve(over_flat, framework, "")
    merged = {**base_k, **over_k}
    method = str(merged.get("reducer.method", ReducerConfig.method))
    kind = str(merged.get("teacher.kind", "") or _default_teacher(framework))
    notes: list[str] = []
    length_base, length_over = _run_length_given(base_k, where), _run_length_given(over_k, "")
    for k in length_base:  # a run length on the command line replaces the recipe's
        if length_over and k != length_over[0]:
            del merged[k]
            notes.append(f"{length_over[0]} overridden: ignoring the recipe's {k} = {base_k[k]!r}")
    dropped = []
    for k in list(base_k):
        if k not in over_k and _not_applicable(k, framework, method, kind):
            dropped.append(k)
            del merged[k]
    if dropped:
        switched = [s for s in ("framework", "reducer.method", "teacher.kind") if s in over_k]
        if not switched:  # the recipe itself is inconsistent
            raise ValueError(where + _not_applicable(dropped[0], framework, method, kind)
                             + "; remove it from the recipe")
        notes.append(f"{', '.join(switched)} overridden: ignoring the recipe's {', '.join(dropped)}")
    for k in merged:
        why = _not_applicable(k, framework, method, kind)
        if why:
            raise ValueError(f"{why}; remove it or change the component it belongs to")
    cfg = TrainConfig()
    fw_cls = FRAMEWORKS.get(framework).Config
    sections = {"reducer": ReducerConfig(), "teacher": TeacherConfig(), framework: fw_cls()}
    for k, v in merged.items():
        section, _, leaf = k.rpartition(".")
        obj = sections[section] if section else cfg
        setattr(obj, leaf, _coerce(k, v, getattr(obj, leaf)))
    cfg.reducer, cfg.teacher, cfg.fw = sections["reducer"], sections["teacher"], sections[framework]
    if not cfg.teacher.kind:
        cfg.teacher.kind = kind
    cfg.notes = notes
    return cfg


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a TOML recipe (base keys and section tables), checking its keys."""
    data = read_toml(path, "recipe")
    _resolve(flatten(data), str(data.get("framework", TrainConfig.framework)), f"{path}: ")
    return data


def _flat_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flatten(d).items()}


#: base keys that moved into a framework's section (their flat name is now that section's alias)
MOVED_TO_SECTIONS = {"init": "mocov3.init", "freeze_patch_embed": "mocov3.freeze_patch_embed"}


def _section_default(dotted: str) -> Any:
    section, _, leaf = dotted.rpartition(".")
    cls = {**SECTION_CLASSES, **framework_sections()}.get(section)
    return getattr(cls(), leaf) if cls is not None else None


def upgrade_saved(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's (or a study cell's ``config.json``) config in today's nested form.

    Configs saved before sections existed (flat keys, e.g. ``moco_hidden``) are read through the flat
    aliases; keys they predate get defaults. Configs saved before a base key moved into a framework's
    section (:data:`MOVED_TO_SECTIONS`: MoCo v3's ``init``, ``freeze_patch_embed``) have it moved
    there; in another framework's run it is dropped when it holds the default (it was always
    written), and kept otherwise, so that a setting today's config cannot express is an error, not
    silently lost. Keys that never applied to the run (the k-NN keys of a classifier, which old
    configs always held) are dropped."""
    nested = "reducer" in saved and isinstance(saved["reducer"], dict)
    framework = saved.get("framework", TrainConfig.framework)
    table = aliases()
    flat = flatten(saved) if nested else dict(saved)
    keep: dict[str, Any] = {}
    for k, v in flat.items():
        target = k if k in BASE_KEYS or "." in k else _alias_target(k, framework, table)
        section = _section_of(target)
        if section and section not in ("reducer", "teacher", framework):
            moved = k in MOVED_TO_SECTIONS and v != _section_default(target)
            if not moved:
                continue  # another framework's key, which old configs always held
        keep[target] = v
    method = str(keep.get("reducer.method", ReducerConfig.method))
    kind = str(keep.get("teacher.kind", "") or _default_teacher(framework))
    keep = {k: v for k, v in keep.items() if k in MOVED_TO_SECTIONS.values() and not k.startswith(framework)
            or not _not_applicable(k, framework, method, kind)}
    return make_config(keep).to_dict()


def incompatible(saved: dict[str, Any], current: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between a checkpoint's config and ``current`` (beyond the keys
    that may change on resume). A key the checkpoint predates counts as having its default value,
    so old runs stay resumable under the settings they had."""
    now = _flat_dict(current.to_dict())
    then_cfg = make_config(upgrade_saved(saved))
    then = _flat_dict(then_cfg.to_dict())
    keys = (set(then) | set(now)) - RESUMABLE_CHANGES
    return {k: (then.get(k), now.get(k)) for k in sorted(keys) if then.get(k) != now.get(k)}
