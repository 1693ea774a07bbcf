"""``simprune study``: an accuracy study — a grid of training runs and its report.

A study recipe (TOML, see ``studies/``) names a base training recipe and a grid::

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

Every cell (method × keep rate × seed; a dense method runs once, not per keep rate) is one
:class:`simprune.train.loop.Trainer` run, in-process and one after the other, in
``<out>/<cell-slug>/seed<k>``, with ``linear_probe = true``. Finished cells (``results.json``
finished, with ``knn_top1``) are skipped; an interrupted one resumes from its checkpoint, so the
same command continues a study. ``--time-limit`` bounds the whole sitting: each cell gets the
minutes that are left as its ``time_limit`` and the sitting ends with checkpoints.

Several sittings may run at once on one machine (one per CPU core or GPU, e.g. with
``OMP_NUM_THREADS=1`` or ``CUDA_VISIBLE_DEVICES``): a sitting takes a cell by creating
``<cell>/study.lock`` and skips cells another live sitting holds. A lock left by a killed sitting
(its process is gone) is taken over. Locks are per machine: under ``torchrun`` the whole job is
one sitting and takes no locks.

The report (:mod:`simprune.study.report`) is written into the out folder at the end of
every sitting, and by ``--report-only`` from the cell folders alone. Outside a ``runs/`` folder
(gitignored) existing report files are only replaced with ``--overwrite-report``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from simprune.atomic import atomic_write_text
from simprune.train.config import TrainConfig, incompatible, load_recipe, make_config, tomllib, valid_keys

STUDY_KEYS = {
    "name": "study name (default: the file's stem)",
    "description": "text copied into results.md",
    "base": "base training recipe (TOML), relative to the study file, the cwd or the repo",
    "overrides": "table of config keys applied to every cell",
    "methods": "list of {name = ..., <config key> = ..., keep_rates = [...]}",
    "keep_rates": "keep rates of the non-dense methods",
    "seeds": "seeds (default [0])",
    "out": "output folder (default runs/study/<name>)",
}
METHOD_KEYS = ("name", "keep_rates")
#: set by the study itself for every cell, never by a recipe or --set
STUDY_OWNED = {"seed": "seeds / --seeds", "out": "out / --out", "keep_rate": "keep_rates",
               "time_limit": "--time-limit"}
REPO = Path(__file__).resolve().parents[2]
LOG_NAME = "study.json"
DESCRIPTION = "accuracy study: a grid of training runs (method × keep rate × seed) and its report"
ERROR_NAME = "study_error.json"
LOCK_NAME = "study.lock"


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    method: str  # display name
    slug: str  # folder name of method × keep rate
    keep_rate: float | None  # None: dense, runs once
    seed: int
    config: TrainConfig

    @property
    def folder(self) -> Path:
        return Path(self.config.out)

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


def is_main() -> bool:
    """Rank 0 (or no torchrun): the process that prints and writes the study's own files."""
    return int(os.environ.get("RANK", "0")) == 0


def say(msg: str) -> None:
    if is_main():
        print(msg, flush=True)


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")
    if not slug:
        raise ValueError(f"method name {text!r} gives an empty folder name; use letters or digits")
    return slug


def resolve_base(base: str, study_path: Path) -> Path:
    """The base recipe: absolute, else relative to the study file, the cwd, then the repo."""
    p = Path(base)
    tried = [p] if p.is_absolute() else [study_path.parent / p, Path.cwd() / p, REPO / p]
    for cand in tried:
        if cand.is_file():
            return Path(os.path.normpath(cand))
    raise FileNotFoundError(f"base recipe {base!r} not found; tried {', '.join(str(t) for t in tried)}")


def _check_keys(where: str, keys: Sequence[str], extra: Sequence[str] = ()) -> None:
    unknown = sorted(set(keys) - set(valid_keys()) - set(extra))
    if unknown:
        raise ValueError(f"{where}: unknown config keys {unknown}; valid keys: "
                         f"{', '.join([*extra, *valid_keys()])}")
    owned = sorted(set(keys) & set(STUDY_OWNED))
    if owned:
        raise ValueError(f"{where}: {owned} are set by the study; use "
                         + "; ".join(f"{k}: {STUDY_OWNED[k]}" for k in owned))


def parse_sets(items: Sequence[str] | None) -> dict[str, str]:
    """``--set key=value`` strings -> overrides (values are parsed by the config's types)."""
    out: dict[str, str] = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value
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
    from simprune.train.loop import check_config

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study recipe {str(path)!r} not found")
    with path.open("rb") as f:
        spec = tomllib.load(f)
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
    sets = dict(sets or {})
    cells: list[Cell] = []
    slugs: dict[str, str] = {}
    for i, entry in enumerate(methods, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"{path}: methods[{i}] must be a table with a string 'name', got {entry!r}")
        where = f"{path} method {entry['name']!r}"
        m_over = {k: v for k, v in entry.items() if k not in METHOD_KEYS}
        rates = _rates(entry["keep_rates"], where) if "keep_rates" in entry else keep_rates
        if "keep_rate" in m_over:  # one fixed rate for this method
            rates = _rates(m_over.pop("keep_rate"), where)
        _check_keys(where, list(m_over), METHOD_KEYS)
        merged = {**base, **overrides, **m_over}
        merged.pop("out", None)
        dense = {**merged, **sets}.get("method", TrainConfig.method) == "dense"
        if not dense and not rates:
            raise ValueError(f"{where}: no keep rates; set keep_rates in the study or the method")
        slug = slugify(entry["name"])
        if slug in slugs:
            raise ValueError(f"{path}: methods {slugs[slug]!r} and {entry['name']!r} share the folder "
                             f"name {slug!r}; rename one")
        slugs[slug] = entry["name"]
        for rate in [None] if dense else rates:
            cell_slug = slug if rate is None else f"{slug}_kr{rate:g}"
            for seed in seeds:
                cell_over = {"keep_rate": 1.0 if rate is None else rate, "seed": seed,
                             "out": str(out_dir / cell_slug / f"seed{seed}"), "linear_probe": True}
                try:
                    cfg = make_config(merged, {**cell_over, **sets})
                    check_config(cfg)
                except (ValueError, KeyError) as err:
                    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
                    raise ValueError(f"{where}: {msg}") from err
                cells.append(Cell(entry["name"], cell_slug, rate, seed, cfg))
    return Study(name, path, base_path, str(spec.get("description", "")), seeds, keep_rates, out_dir,
                 cells)


# ----------------------------------------------------------------------------- running


def command_line(args: argparse.Namespace) -> str:
    """The ``simprune study`` command that ``args`` stand for (report-only and dry-run left out)."""
    parts = ["simprune", "study", "--config", str(args.config)]
    if args.seeds:
        parts += ["--seeds", *map(str, args.seeds)]
    if args.out:
        parts += ["--out", str(args.out)]
    if args.set:
        parts += ["--set", *args.set]
    if args.time_limit:
        parts += ["--time-limit", f"{args.time_limit:g}"]
    return " ".join(shlex.quote(p) for p in parts)


def check_cell_config(cell: Cell) -> None:
    """A cell folder made with other settings (a changed recipe or --set) would put stale figures
    in the table or fail on resume: refuse, before anything is trained."""
    saved = cell.folder / "config.json"
    if not saved.is_file():
        return
    diff = incompatible(json.loads(saved.read_text()), cell.config)
    if diff:
        lines = "; ".join(f"{k}: cell {a!r} vs study {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{cell.folder} was trained with other settings ({lines}); use another --out "
                         "for a changed study, or the same settings to continue it")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def take_lock(folder: Path) -> dict[str, Any] | None:
    """Create ``folder/study.lock`` for this process. Returns ``None`` when taken, else the
    holder's record (``pid``, ``host``, ``started``). A lock of a dead process on this host is
    replaced; one from another host is respected (the user removes it if that sitting is gone)."""
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):  # being written this instant, or garbage
                holder = {}
            stale = (holder.get("host") == me["host"] and isinstance(holder.get("pid"), int)
                     and not _pid_alive(holder["pid"]))
            if not stale:
                return holder or {"pid": "?", "host": "?", "started": "?"}
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return None
    return {"pid": "?", "host": "?", "started": "?"}


def release_lock(folder: Path) -> None:
    path = folder / LOCK_NAME
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def skip_finished(cell: Cell, head: str, counts: dict[str, float], log) -> bool:
    """Whether ``cell`` is already finished (then counted and logged as skipped)."""
    from simprune.study.report import is_finished, read_results

    res = read_results(cell.folder)
    if not is_finished(res):
        return False
    counts["skipped"] += 1
    counts["finished"] += 1
    log(f"{head}: finished, skipped (k-NN top-1 {res['knn_top1']:.2f}%)")
    return True


def read_log(out: Path) -> dict[str, Any]:
    path = out / LOG_NAME
    return json.loads(path.read_text()) if path.is_file() else {"sittings": []}


def run_cells(study: Study, time_limit: float = 0.0, log=None,
              counts: dict[str, float] | None = None) -> dict[str, float]:
    """Train every unfinished cell in order. Returns (and fills ``counts``, kept even when a cell
    fails): ``skipped``, ``trained``, ``finished``, ``failed`` cells, ``busy`` (held by another
    sitting), ``stopped_by_time`` and ``seconds``. A cell whose training fails
    (:class:`TrainingError`, e.g. a NaN loss) is recorded in ``<cell>/study_error.json`` and the
    grid goes on; the next sitting tries it again.

    With ``time_limit`` (minutes, > 0) each cell gets the minutes left of the sitting as its own
    ``time_limit``; once the minutes are spent no further cell starts (a cell stopped by the
    limit keeps its checkpoint and resumes next time).
    """
    from simprune.train import dist
    from simprune.train import loop as train_loop

    log = log or say
    start = time.perf_counter()
    n = len(study.cells)
    counts = {} if counts is None else counts
    counts.update(skipped=0, trained=0, finished=0, failed=0, busy=0, stopped_by_time=0)
    locking = int(os.environ.get("WORLD_SIZE", "1")) == 1
    for cell in study.cells:
        check_cell_config(cell)
    try:
        for i, cell in enumerate(study.cells, start=1):
            head = f"cell {i}/{n}: {cell.label} seed {cell.seed}"
            if skip_finished(cell, head, counts, log):
                continue
            cfg = cell.config
            if time_limit > 0:
                left = time_limit - (time.perf_counter() - start) / 60
                if left <= 0:
                    counts["stopped_by_time"] = 1
                    log(f"time limit of {time_limit:g} min reached before {head}; run the same command "
                        "to continue")
                    break
                cfg = replace(cfg, time_limit=left)
            if locking:
                holder = take_lock(cell.folder)
                if holder is not None:
                    counts["busy"] += 1
                    log(f"{head}: being trained by another sitting (pid {holder.get('pid')} on "
                        f"{holder.get('host')} since {holder.get('started')}), skipped")
                    continue
                if skip_finished(cell, head, counts, log):  # finished by the sitting we raced?
                    release_lock(cell.folder)
                    continue
            try:
                trainer = train_loop.Trainer(cfg)
            except BaseException:
                if locking:
                    release_lock(cell.folder)
                raise
            state = (f"resumed at step {trainer.step}/{trainer.total_steps}" if trainer.step
                     else f"new, {trainer.total_steps} steps")
            log(f"{head} ({state})")
            error_file = cell.folder / ERROR_NAME
            try:
                result = trainer.run()
            except train_loop.TrainingError as err:  # e.g. a NaN loss: record it, go on with the grid
                counts["failed"] += 1
                log(f"{head} failed: {err}")
                if is_main():
                    error_file.parent.mkdir(parents=True, exist_ok=True)
                    error_file.write_text(json.dumps({"error": str(err), "step": trainer.step}, indent=2))
                continue
            finally:
                del trainer
                if locking:
                    release_lock(cell.folder)
            counts["trained"] += 1
            if error_file.exists() and is_main():
                error_file.unlink()
            if result.get("finished") and "knn_top1" in result:
                counts["finished"] += 1
    finally:
        dist.cleanup()
        counts["seconds"] = time.perf_counter() - start
    return counts


def check_report_target(out: Path, overwrite: bool) -> None:
    """Outside a ``runs/`` folder (gitignored), existing reports may be committed results."""
    from simprune.study.report import REPORT_FILES

    if overwrite or "runs" in out.resolve().parts:
        return
    existing = [name for name in REPORT_FILES if (out / name).exists()]
    if existing:
        raise ValueError(f"{out} already holds {', '.join(existing)} and is not under a runs/ folder "
                         "(it may hold committed results); pass --overwrite-report to replace them, "
                         "or use another --out")


def add_study_args(p: argparse.ArgumentParser) -> None:
    """Options of ``simprune study``."""
    p.add_argument("--config", required=True, help="study recipe (TOML), e.g. studies/table2_cpu.toml")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the recipe's)")
    p.add_argument("--out", default=None, help="output folder (default: the recipe's, else "
                   "runs/study/<name>)")
    p.add_argument("--set", action="extend", nargs="+", default=None, metavar="KEY=VALUE",
                   help="config override for every cell, e.g. --set data=../shared/data epochs=0.3")
    p.add_argument("--time-limit", type=float, default=0.0, metavar="MIN",
                   help="minutes for this whole sitting; cells stop with checkpoints, rerun to continue")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their state; train nothing")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from the existing cell folders; train nothing")
    p.add_argument("--overwrite-report", action="store_true",
                   help="replace report files in an out folder that is not under runs/")


def dry_run(study: Study, log=None) -> None:
    from simprune.study.report import flops_percent, read_cell

    log = log or say
    log(f"study {study.name}: {len(study.cells)} cells in {study.out} (base {study.base_path})")
    for i, cell in enumerate(study.cells, start=1):
        r = read_cell(cell)
        where = f" at step {r.step}/{r.total_steps}" if r.step is not None and not r.finished else ""
        flops = flops_percent(cell.config)
        flops_txt = "FLOPs n/a" if flops is None else f"FLOPs {flops:.1f}% of dense"
        try:
            check_cell_config(cell)
        except ValueError as err:
            where += f" — SETTINGS DIFFER, the study will refuse to run: {err}"
        log(f"cell {i}/{len(study.cells)}: {cell.label} seed {cell.seed}: {r.state}{where}; "
            f"{cell.config.framework}/{cell.config.method}, {flops_txt}; {cell.folder}")


def run_study(args: argparse.Namespace) -> int:
    """``simprune study``: train the grid (resuming), then write the report. User errors raise
    ``ValueError``/``FileNotFoundError`` (the CLI prints them); returns 0."""
    from simprune.study.report import write_report

    if args.time_limit < 0:
        raise ValueError(f"--time-limit must be >= 0 minutes, got {args.time_limit}")
    study = load_study(args.config, args.seeds, args.out, parse_sets(args.set))
    if args.dry_run:
        dry_run(study)
        return 0
    check_report_target(study.out, args.overwrite_report)
    for cell in study.cells:
        check_cell_config(cell)
    command = command_line(args)
    if not args.report_only:
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        counts: dict[str, float] = {}
        try:
            run_cells(study, args.time_limit, counts=counts)
        finally:
            if is_main():
                # Read now, not at the start: a sitting side by side may have logged meanwhile.
                log_data = read_log(study.out)
                log_data.setdefault("sittings", []).append({
                    "command": command, "started": started, "seeds": study.seeds,
                    "wall_seconds": counts.get("seconds", None), "cells_trained": counts.get("trained"),
                    "cells_finished": counts.get("finished"), "cells": len(study.cells)})
                atomic_write_text(study.out / LOG_NAME, json.dumps(log_data, indent=2))
    if not is_main():
        return 0
    log_data = read_log(study.out)
    training = [s for s in log_data.get("sittings", []) if s.get("command")]
    shown = training[-1]["command"] if training else command
    rows, table = write_report(study, study.out, shown, log_data)
    done = sum(r.seeds_finished for r in rows)
    print(f"\n{table}\n\n{done}/{len(study.cells)} cells finished; report: {study.out / 'results.md'}, "
          f"results.csv, cells.csv, tradeoff.png", flush=True)
    if done < len(study.cells) and not args.report_only:
        busy = int(counts.get("busy", 0))
        if busy:
            print(f"{busy} cells are being trained by another sitting; when it ends, "
                  "run the same command again (or add --report-only) for the full table", flush=True)
        else:
            print("run the same command again to continue the unfinished cells", flush=True)
    return 0


__all__ = ["Cell", "Study", "add_study_args", "command_line", "load_study", "parse_sets",
           "run_cells", "run_study"]
