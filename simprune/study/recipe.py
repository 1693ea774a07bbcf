"""A study recipe (TOML) and the grid of cells it stands for.

A study recipe names a base training recipe and a grid::

    name = "table2_cpu"                              # default: the file's stem
    description = "what the table shows"             # optional, copied into results.md
    base = "configs/cifar10_mocov3_simprune.toml"    # relative to the study file, cwd or the repo
    keep_rates = [0.8]
    seeds = [0, 1, 2]
    out = "runs/study/table2_cpu"                    # default: runs/study/<name>
    [overrides]                                      # config keys for every cell
    epochs = 0.6
    [[methods]]                                      # or: methods = [{name = ..., ...}, ...]
    name = "Dense"
    method = "dense"
    [[methods]]
    name = "SimPrune sliding"
    method = "simprune"
    window = "sliding"
    # keep_rates = [0.9]                             # optional, this method's own keep rates
    # finetune = {method = "evit", keep_rate = 0.5}  # optional, this method's fine-tuning keys
    [finetune]                                       # optional: fine-tune every finished cell
    recipe = "configs/cifar10_mim_finetune.toml"     # a fine-tuning recipe (optional)
    epochs = 3                                       # and config keys over it

Every cell is method × keep rate × seed; a dense method runs once, not per keep rate, and so does a
method row with ``flops_budget = F`` (a fraction of dense training FLOPs; no keep rates): its keep
rate is solved from the budget (:mod:`simprune.bench.budget`) when the study is loaded, or the
reducer takes the budget itself (``owns_flops_budget``). Its config is
the base recipe, then ``[overrides]``, then the method's keys, then ``--set``, with the keys the
study owns (:data:`STUDY_OWNED`) set per cell. With a ``[finetune]`` table, each cell also has a
fine-tuning run (:mod:`simprune.train.finetune`: supervised, from the cell's backbone, in
``<cell>/finetune``, same seed): the cell's model and data, then the fine-tuning recipe, the table's
keys and the method's ``finetune`` keys. Every cell's configs are built and checked by
:func:`load_study` before anything runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from simprune.config import (
    FRAMEWORKS,
    TrainConfig,
    aliases,
    flatten,
    load_recipe,
    make_config,
    read_toml,
    valid_keys,
)
from simprune.config.flags import parse_sets as config_sets
from simprune.train.finetune import finetune_config

STUDY_KEYS = {
    "name": "study name (default: the file's stem)",
    "description": "text copied into results.md",
    "base": "base training recipe (TOML), relative to the study file, the cwd or the repo",
    "overrides": "table of config keys applied to every cell",
    "methods": "list of {name = ..., <config key> = ..., keep_rates = [...]}",
    "keep_rates": "keep rates of the non-dense methods",
    "seeds": "seeds (default [0])",
    "out": "output folder (default runs/study/<name>)",
    "finetune": "table: fine-tune every finished cell; recipe = a fine-tuning recipe, plus config keys",
}
METHOD_KEYS = ("name", "keep_rates", "finetune")
#: the fine-tuning run of a cell lives in this sub-folder of the cell's
FINETUNE_DIR = "finetune"
#: set by the study for every fine-tuning run
FINETUNE_OWNED = {"seed": "the cell's seed", "out": "<cell>/finetune", "time_limit": "--time-limit",
                  "framework": "always supervised", "init_from": "the cell's folder",
                  "supervised.init_from": "the cell's folder"}
#: set by the study itself for every cell, never by a recipe or --set
STUDY_OWNED = {"seed": "seeds / --seeds", "out": "out / --out", "keep_rate": "keep_rates",
               "reducer.keep_rate": "keep_rates",
               "time_limit": "--time-limit"}
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    method: str  # display name
    slug: str  # folder name of method × keep rate
    keep_rate: float | None  # None: dense, runs once (or a reducer that owns its flops budget)
    seed: int
    config: TrainConfig
    finetune: TrainConfig | None = None  # the fine-tuning run from this cell's backbone, if any

    @property
    def folder(self) -> Path:
        return Path(self.config.out)

    @property
    def finetune_folder(self) -> Path | None:
        return None if self.finetune is None else Path(self.finetune.out)

    @property
    def label(self) -> str:
        return self.method if self.keep_rate is None else f"{self.method} kr={self.keep_rate:g}"


@dataclass
class Study:
    name: str
    path: Path
    base_path: Path
    description: str
    seeds: list[int]
    keep_rates: list[float]
    out: Path
    cells: list[Cell]
    finetune_recipe: Path | None = None  # the [finetune] table's recipe, if it names one
    finetune_keys: dict[str, Any] | None = None  # the [finetune] table's keys; None: no fine-tuning


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")
    if not slug:
        raise ValueError(f"method name {text!r} gives an empty folder name; use letters or digits")
    return slug


def resolve_base(base: str, study_path: Path, what: str = "base recipe") -> Path:
    """A recipe a study names: absolute, else relative to the study file, the cwd, then the repo."""
    p = Path(base)
    tried = [p] if p.is_absolute() else [study_path.parent / p, Path.cwd() / p, REPO / p]
    for cand in tried:
        if cand.is_file():
            return Path(os.path.normpath(cand))
    raise FileNotFoundError(f"{what} {base!r} not found; tried {', '.join(str(t) for t in tried)}")


def _check_keys(where: str, keys: Sequence[str], extra: Sequence[str] = (),
                owned_keys: dict[str, str] = STUDY_OWNED, owner: str = "the study") -> None:
    """Unknown keys (``extra``: further valid names) and keys ``owner`` sets (``owned_keys``: key
    -> where it comes from) are errors naming the valid keys."""
    unknown = sorted(set(keys) - set(valid_keys()) - set(aliases()) - set(extra))
    if unknown:
        raise ValueError(f"{where}: unknown config keys {unknown}; valid keys: "
                         f"{', '.join([*extra, *valid_keys()])}")
    owned = sorted(set(keys) & set(owned_keys))
    if owned:
        raise ValueError(f"{where}: {owned} are set by {owner}; use "
                         + "; ".join(f"{k}: {owned_keys[k]}" for k in owned))


def _check_finetune_keys(where: str, keys: Sequence[str]) -> None:
    _check_keys(where, keys, owned_keys=FINETUNE_OWNED, owner="the study for fine-tuning")


def _finetune_table(spec: dict[str, Any], path: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The ``[finetune]`` table: its recipe's path (or ``None``) and its config keys; ``(None,
    None)`` when the study fine-tunes nothing."""
    if "finetune" not in spec:
        return None, None
    table = spec["finetune"]
    if not isinstance(table, dict):
        raise ValueError(f"{path}: 'finetune' must be a table ([finetune]), got {table!r}")
    keys = flatten({k: v for k, v in table.items() if k != "recipe"})
    _check_keys(f"{path} [finetune]", list(keys), ("recipe",), FINETUNE_OWNED,
                "the study for fine-tuning")
    recipe = table.get("recipe")
    if recipe is not None and not isinstance(recipe, str):
        raise ValueError(f"{path} [finetune]: recipe must be a path (string), got {recipe!r}")
    return (resolve_base(recipe, path, "fine-tuning recipe") if recipe else None), keys


def parse_sets(items: Sequence[str] | None) -> dict[str, str]:
    """``--set key=value`` strings -> overrides (values are parsed by the config's types)."""
    out = config_sets(items)
    _check_keys("--set", list(out))
    return out


def _rates(value: Any, where: str) -> list[float]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{where}: keep rates must be a non-empty list of numbers, got {value!r}")
    return [float(v) for v in values]


def load_study(path: str | Path, seeds: Sequence[int] | None = None, out: str | Path | None = None,
               sets: dict[str, Any] | None = None) -> Study:
    """Read a study recipe and build every cell's config (all errors before anything runs)."""
    from simprune.run import check_config

    path = Path(path)
    spec = read_toml(path, "study recipe")
    unknown = sorted(set(spec) - set(STUDY_KEYS))
    if unknown:
        valid = "; ".join(f"{k} ({v})" for k, v in STUDY_KEYS.items())
        raise ValueError(f"{path}: unknown study keys {unknown}; valid keys: {valid}")
    if "base" not in spec:
        raise ValueError(f"{path}: 'base' (the training recipe the study starts from) is missing")
    name = str(spec.get("name", path.stem))
    base_path = resolve_base(str(spec["base"]), path)
    base = load_recipe(base_path)
    overrides = dict(spec.get("overrides", {}))
    _check_keys(f"{path} [overrides]", list(overrides))
    methods = spec.get("methods")
    if not isinstance(methods, list) or not methods:
        raise ValueError(f"{path}: 'methods' must be a non-empty list of tables with a 'name'")
    keep_rates = _rates(spec["keep_rates"], f"{path} keep_rates") if "keep_rates" in spec else []
    seeds = [int(s) for s in (seeds if seeds else spec.get("seeds", [0]))]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must differ, got {seeds}")
    out_dir = Path(out or spec.get("out") or Path("runs") / "study" / name)
    ft_path, ft_keys = _finetune_table(spec, path)
    ft_recipe = load_recipe(ft_path) if ft_path else {}
    sets = dict(sets or {})
    cells: list[Cell] = []
    slugs: dict[str, str] = {}
    for i, entry in enumerate(methods, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"{path}: methods[{i}] must be a table with a string 'name', got {entry!r}")
        where = f"{path} method {entry['name']!r}"
        m_over = {k: v for k, v in entry.items() if k not in METHOD_KEYS}
        m_ft = entry.get("finetune", {})
        if not isinstance(m_ft, dict):
            raise ValueError(f"{where}: 'finetune' must be a table of config keys, got {m_ft!r}")
        m_ft = flatten(m_ft)
        if m_ft and ft_keys is None:
            raise ValueError(f"{where}: has fine-tuning keys but the study has no [finetune] table")
        _check_finetune_keys(f"{where} finetune", list(m_ft))
        rates = _rates(entry["keep_rates"], where) if "keep_rates" in entry else keep_rates
        if "keep_rate" in m_over:  # one fixed rate for this method
            rates = _rates(m_over.pop("keep_rate"), where)
        _check_keys(where, list(m_over), METHOD_KEYS)
        # the base recipe and the study's overrides form the recipe layer; the method row, the
        # cell and --set override it (keys of a component a method row replaces are dropped)
        merged = {**flatten(base), **overrides}
        merged.pop("out", None)
        try:
            probe = make_config(merged, {**m_over, **sets})
        except (ValueError, KeyError) as err:
            msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            raise ValueError(f"{where}: {msg}") from err
        dense = probe.reducer.method == "dense"
        # the linear probe is part of the k-NN evaluation; a classifier reports its own top-1
        probe_key = {"linear_probe": True} if FRAMEWORKS.get(probe.framework).eval_protocol == "knn" else {}
        budget = 0.0 if dense else probe.reducer.flops_budget
        if budget:  # one cell per seed, its keep rate solved from the budget (or the reducer's own)
            from simprune.bench.budget import check_budget_overrides

            row_rates = {k: entry[k] for k in ("keep_rate", "keep_rates") if k in entry}
            check_budget_overrides({**row_rates, **sets, "flops_budget": budget}, f"{where}: ")
            rates = []
        if not dense and not budget and not rates:
            raise ValueError(f"{where}: no keep rates; set keep_rates in the study or the method")
        slug = slugify(entry["name"])
        if slug in slugs:
            raise ValueError(f"{path}: methods {slugs[slug]!r} and {entry['name']!r} share the folder "
                             f"name {slug!r}; rename one")
        slugs[slug] = entry["name"]
        solved = None  # the budget's keep rate, solved once for the row's seeds
        for rate in [None] if dense or budget else rates:
            cell_slug = (f"{slug}_fb{budget:g}" if budget else slug if rate is None
                         else f"{slug}_kr{rate:g}")
            for seed in seeds:
                cell_over = {**({} if rate is None else {"keep_rate": rate}), "seed": seed,
                             "out": str(out_dir / cell_slug / f"seed{seed}"), **probe_key}
                try:
                    cfg = make_config(merged, {**m_over, **cell_over, **sets})
                    check_config(cfg)
                    if budget:
                        from simprune.bench.budget import apply_flops_budget, owns_flops_budget

                        if not owns_flops_budget(cfg.reducer.method):
                            if solved is None:
                                solved = apply_flops_budget(cfg)[0].reducer.keep_rate
                            cfg = replace(cfg, reducer=replace(cfg.reducer, keep_rate=solved))
                except (ValueError, KeyError) as err:
                    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
                    raise ValueError(f"{where}: {msg}") from err
                ft = None
                if ft_keys is not None:
                    ft_over = {**ft_keys, **m_ft, "seed": seed, "out": str(Path(cfg.out) / FINETUNE_DIR)}
                    try:
                        ft = finetune_config(cfg.to_dict(), cfg.out, ft_recipe, ft_over)
                        check_config(ft)
                    except (ValueError, KeyError) as err:
                        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
                        raise ValueError(f"{where} (fine-tuning): {msg}") from err
                cells.append(Cell(entry["name"], cell_slug, solved if budget else rate, seed, cfg, ft))
    return Study(name, path, base_path, str(spec.get("description", "")), seeds, keep_rates, out_dir,
                 cells, ft_path, ft_keys)


__all__ = ["FINETUNE_DIR", "FINETUNE_OWNED", "METHOD_KEYS", "STUDY_KEYS", "STUDY_OWNED", "Cell",
           "Study", "load_study", "parse_sets", "resolve_base", "slugify"]
