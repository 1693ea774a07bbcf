"""What the cost benchmarks set for a framework that a training run would read from disk.

A cost count needs the step's shapes, not trained weights. A framework whose build reads a file
(``distill``: its frozen teacher) names, in :meth:`~simprune.frameworks.base.Framework.bench_defaults`,
the settings that let it build without one (``distill.random_teacher = true``: a randomly
initialised frozen teacher of ``teacher.model``). ``bench flops`` and ``bench cost`` apply them
only when neither the recipe nor the command line decides them, and list them in the config
notes; the framework itself says on stderr what it built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from simprune.config import aliases, flatten
from simprune.frameworks import FRAMEWORKS


def given_keys(flat: Mapping[str, Any], framework: str) -> set[str]:
    """The dotted keys a recipe or overrides (flat aliases or dotted keys) give."""
    table = aliases()
    out = set()
    for k in flat:
        target = table.get(k, k)
        out.add(f"{framework}.{target[2:]}" if target.startswith("*.") else target)
    return out


def bench_defaults(base: Mapping[str, Any], over: Mapping[str, Any],
                   framework: str = "dino") -> dict[str, Any]:
    """The framework's :meth:`bench_defaults` for the keys neither ``base`` (a recipe, nested or
    flat) nor ``over`` give; ``framework`` is used when neither names one."""
    flat = {**flatten(dict(base)), **flatten(dict(over))}
    name = str(flat.get("framework", framework))
    if name not in FRAMEWORKS:
        return {}  # an unknown name: make_config lists the known ones
    return dict(FRAMEWORKS.get(name).bench_defaults(given_keys(flat, name)))


def describe(defaults: Mapping[str, Any]) -> list[str]:
    """One note per setting the benchmark made, for ``TrainConfig.notes`` and the tables."""
    return [f"set for cost counting (no file is read): {k} = {v!r}" for k, v in defaults.items()]
