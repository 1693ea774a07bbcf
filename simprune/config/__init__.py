"""The training configuration: the base keys, the sections' dataclasses, the framework registry
their sections come from, TOML and flag parsing, and the checks that every key applies.

This package sits below ``frameworks/``: it imports no framework (the framework registry it holds
is filled by ``simprune.frameworks``), no run assembly and nothing of ``train/``.
"""

from simprune.config.base import (
    BASE_KEYS,
    FRAMEWORKS,
    KEY_HELP,
    MODEL_SIZE_KEYS,
    RESUMABLE_CHANGES,
    RUN_LENGTH,
    SECTION_CLASSES,
    TEACHER_KEYS,
    ReducerConfig,
    TeacherConfig,
    TrainConfig,
    aliases,
    flatten,
    framework_sections,
    incompatible,
    load_recipe,
    make_config,
    model_overrides,
    owns_flops_budget,
    planned_steps,
    run_length_key,
    upgrade_saved,
    valid_keys,
)
from simprune.config.toml import read_toml

__all__ = [
    "BASE_KEYS", "FRAMEWORKS", "KEY_HELP", "MODEL_SIZE_KEYS", "RESUMABLE_CHANGES", "RUN_LENGTH",
    "ReducerConfig", "SECTION_CLASSES", "TEACHER_KEYS", "TeacherConfig", "TrainConfig", "aliases",
    "flatten", "framework_sections", "incompatible", "load_recipe", "make_config",
    "model_overrides", "owns_flops_budget", "planned_steps", "read_toml", "run_length_key",
    "upgrade_saved", "valid_keys",
]
