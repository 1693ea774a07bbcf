"""A sitting of ``simprune study``: train the grid's unfinished cells in turn, log the sitting in
``<out>/study.json``, then write the report.

A cell whose training fails (:class:`~simprune.train.loop.TrainingError`, e.g. a NaN loss) is
recorded in ``<cell>/study_error.json`` and the grid goes on; the sitting then names every failed
run on stderr and exits 1 (:mod:`simprune.study.failures`). A cell whose run cannot start (a
setting that cannot work) stops the sitting with one line naming the cell; a cell made with other
settings than the study's is refused before anything is trained. Only rank 0 (or a process outside
``torchrun``) prints and writes the study's own files.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from simprune.atomic import atomic_write_text
from simprune.config import TrainConfig, incompatible
from simprune.study.args import PHASES, command_line
from simprune.study.failures import FAILED_EXIT, error_record, failed_runs, failure_line
from simprune.study.locks import busy_with, pid_alive, release_lock, take_lock
from simprune.study.recipe import Cell, Study, load_study, parse_sets
from simprune.study.results import ERROR_NAME, is_finished, read_cell, read_results, top1_metric, top1_of
from simprune.train.folder_lock import FolderBusyError, holding_run_folder

#: the log of every sitting (command, start, wall time, cells trained), in the out folder
LOG_NAME = "study.json"


def is_main() -> bool:
    """Rank 0 (or no torchrun): the process that prints and writes the study's own files."""
    return int(os.environ.get("RANK", "0")) == 0


def say(msg: str) -> None:
    if is_main():
        print(msg, flush=True)


def check_folder_config(folder: Path, cfg: TrainConfig) -> None:
    """A run folder made with other settings (a changed recipe or --set) would put stale figures
    in the table or fail on resume: refuse, before anything is trained."""
    saved = folder / "config.json"
    if not saved.is_file():
        return
    diff = incompatible(json.loads(saved.read_text()), cfg)
    if diff:
        lines = "; ".join(f"{k}: cell {a!r} vs study {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{folder} was trained with other settings ({lines}); use another --out "
                         "for a changed study, or the same settings to continue it")


def check_cell_config(cell: Cell) -> None:
    """:func:`check_folder_config` for the cell's training run and its fine-tuning run."""
    check_folder_config(cell.folder, cell.config)
    if cell.finetune is not None:
        check_folder_config(Path(cell.finetune.out), cell.finetune)


def skip_finished(folder: Path, head: str, counts: dict[str, float], log, what: str = "",
                  finished_key: str = "finished") -> bool:
    """Whether the run in ``folder`` is already finished (then counted in ``skipped`` and
    ``finished_key``, and logged as skipped)."""
    res = read_results(folder)
    if not is_finished(res):
        return False
    counts["skipped"] += 1
    counts[finished_key] += 1
    metric = "k-NN" if top1_metric(res) == "knn" else "test"
    log(f"{head}: {what}finished, skipped ({metric} top-1 {top1_of(res):.2f}%)")
    return True


def read_log(out: Path) -> dict[str, Any]:
    path = out / LOG_NAME
    return json.loads(path.read_text()) if path.is_file() else {"sittings": []}


def sitting_id(started: str) -> str:
    """A sitting's id in ``study.json``: ``<started>~<random>/<host>/<pid>``. The host and pid let
    a later sitting on this machine tell one killed outright; the random part keeps two sittings
    of one process started within the same second apart (a study run twice from Python)."""
    return f"{started}~{uuid.uuid4().hex[:8]}/{socket.gethostname()}/{os.getpid()}"


def log_sitting(out: Path, entry: dict[str, Any]) -> None:
    """Add ``entry`` to ``study.json``, or update the entry with its ``id``. The log is read
    again each time: a sitting side by side may have logged meanwhile. A sitting's entry is written
    when it starts (``state: running``) and completed when it ends (``ended``, ``interrupted`` or
    ``failed``); one killed outright keeps ``running`` until a later sitting on the same machine
    finds its process gone and marks it ``killed``."""
    log_data = read_log(out)
    sittings = log_data.setdefault("sittings", [])
    host = socket.gethostname()
    for s in sittings:  # a sitting of this machine killed outright (SIGKILL, power) never ended
        who = str(s.get("id", "")).rsplit("/", 2)
        if (s.get("state") == "running" and len(who) == 3 and who[1] == host and who[2].isdigit()
                and not pid_alive(int(who[2]))):
            s["state"] = "killed"
    for i, s in enumerate(sittings):
        if s.get("id") == entry["id"]:
            sittings[i] = dict(entry)
            break
    else:
        sittings.append(dict(entry))
    atomic_write_text(out / LOG_NAME, json.dumps(log_data, indent=2))


def _run_one(folder: Path, cfg: TrainConfig, head: str, counts: dict[str, float], log,
             locking: bool, keys: tuple[str, str], start: float, time_limit: float) -> bool:
    """Train (or resume) the run in ``folder``; ``False`` when the time limit is spent (no
    further run may start), else ``True``. Counts ``keys`` (the names of runs trained and of
    those finished), ``failed`` and ``busy``; a failed run is recorded in
    ``<folder>/study_error.json``."""
    from simprune.train import loop as train_loop

    if time_limit > 0:
        left = time_limit - (time.perf_counter() - start) / 60
        if left <= 0:
            counts["stopped_by_time"] = 1
            log(f"time limit of {time_limit:g} min reached before {head}; run the same command "
                "to continue")
            return False
        cfg = replace(cfg, time_limit=left)
    if locking:
        holder = take_lock(folder)
        if holder is not None:
            counts["busy"] += 1
            log(f"{head}: being trained by another sitting (pid {holder.get('pid')} on "
                f"{holder.get('host')} since {holder.get('started')}), skipped")
            return True
        if is_finished(read_results(folder)):  # finished by the sitting we raced?
            release_lock(folder)
            return True
    held = ExitStack()
    try:
        held.enter_context(holding_run_folder(folder))  # a `simprune train` on this cell's folder
        trainer = train_loop.Trainer(cfg)
    except FolderBusyError as err:
        held.close()
        if locking:
            release_lock(folder)
        counts["busy"] += 1
        log(f"{head}: skipped: {err}")
        return True
    except (ValueError, FileNotFoundError, train_loop.TrainingError) as err:  # before any step
        held.close()
        if locking:
            release_lock(folder)
        raise train_loop.TrainingError(
            f"{head}: {err} (nothing was trained; running the same command again fails the same "
            "way until this is fixed)") from err
    except BaseException:
        held.close()
        if locking:
            release_lock(folder)
        raise
    state = ("trained, to be evaluated" if trainer.step >= trainer.total_steps > 0
             else f"resumed at step {trainer.step}/{trainer.total_steps}" if trainer.step
             else f"new, {trainer.total_steps} steps")
    log(f"{head} ({state})")
    error_file = folder / ERROR_NAME
    try:
        result = trainer.run()
    except train_loop.TrainingError as err:  # e.g. a NaN loss: record it, go on with the grid
        counts["failed"] += 1
        log(f"{head} failed: {err}")
        if is_main():
            error_file.parent.mkdir(parents=True, exist_ok=True)
            rec = error_record(err, trainer.step, head, isinstance(err, train_loop.NonFiniteError))
            error_file.write_text(json.dumps(rec, indent=2))
        return True
    finally:
        del trainer
        held.close()
        if locking:
            release_lock(folder)
    counts[keys[0]] += 1
    if error_file.exists() and is_main():
        error_file.unlink()
    if result.get("finished") and top1_of(result) is not None:
        counts[keys[1]] += 1
    return True


def select_methods(study: Study, methods: list[str] | None) -> list[Cell]:
    """The cells of the named methods (all cells when ``methods`` is empty); an unknown name is a
    ``ValueError`` listing the study's methods."""
    if not methods:
        return list(study.cells)
    names = list(dict.fromkeys(c.method for c in study.cells))
    unknown = [m for m in methods if m not in names]
    if unknown:
        raise ValueError(f"--methods {', '.join(map(repr, unknown))}: not a method of study "
                         f"{study.name}; its methods: {', '.join(map(repr, names))}")
    return [c for c in study.cells if c.method in methods]


def run_cells(study: Study, time_limit: float = 0.0, log=None,
              counts: dict[str, float] | None = None, phase: str = "all",
              methods: list[str] | None = None) -> dict[str, float]:
    """Train every unfinished cell in order, then (``[finetune]``) fine-tune it once it is
    finished. Returns (and fills ``counts``, kept even when a cell fails): ``skipped``,
    ``trained``, ``finished``, ``finetuned``, ``finetuned_finished``, ``failed`` runs, ``busy``
    (held by another sitting), ``stopped_by_time`` and ``seconds``. A run whose training fails
    (:class:`TrainingError`, e.g. a NaN loss) is recorded in ``<run>/study_error.json`` and the
    grid goes on; the next sitting tries it again. ``phase`` (:data:`PHASES`) limits the sitting
    to training or to fine-tuning.

    With ``time_limit`` (minutes, > 0) each run gets the minutes left of the sitting as its own
    ``time_limit``; once the minutes are spent no further run starts (a run stopped by the
    limit keeps its checkpoint and resumes next time). ``methods`` limits the sitting to those
    methods' cells (:func:`select_methods`).
    """
    from simprune import dist

    if phase not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    log = log or say
    start = time.perf_counter()
    cells = select_methods(study, methods)
    n = len(study.cells)
    counts = {} if counts is None else counts
    counts.update(skipped=0, trained=0, finished=0, finetuned=0, finetuned_finished=0, failed=0,
                  busy=0, stopped_by_time=0)
    locking = int(os.environ.get("WORLD_SIZE", "1")) == 1
    for cell in study.cells:
        check_cell_config(cell)
    try:
        for i, cell in enumerate(study.cells, start=1):
            if cell not in cells:
                continue
            head = f"cell {i}/{n}: {cell.label} seed {cell.seed}"
            if phase != "finetune" and not skip_finished(cell.folder, head, counts, log):
                if not _run_one(cell.folder, cell.config, head, counts, log, locking,
                                ("trained", "finished"), start, time_limit):
                    break
            if cell.finetune is None or phase == "train" or not is_finished(read_results(cell.folder)):
                continue
            ft_folder = Path(cell.finetune.out)
            if skip_finished(ft_folder, head, counts, log, "fine-tuning ", "finetuned_finished"):
                continue
            if not _run_one(ft_folder, cell.finetune, f"{head} fine-tuning", counts, log, locking,
                            ("finetuned", "finetuned_finished"), start, time_limit):
                break
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


def dry_run(study: Study, log=None) -> None:
    """List the cells with their state and FLOPs; train nothing."""
    from simprune.config import owns_flops_budget
    from simprune.study.flops import cell_flops_percent

    log = log or say
    log(f"study {study.name}: {len(study.cells)} cells in {study.out} (base {study.base_path})")
    for i, cell in enumerate(study.cells, start=1):
        r = read_cell(cell)
        where = f" at step {r.step}/{r.total_steps}" if r.step is not None and not r.finished else ""
        busy = None if r.finished else busy_with(cell.folder)
        if busy is not None:  # a step is the last checkpoint's: the sitting has gone on since
            where += f"{' (last checkpoint)' if where else ''}, being trained now by {busy}"
        flops = cell_flops_percent(cell.config, [cell.folder])
        if owns_flops_budget(cell.config.reducer.method):
            flops_txt = (f"FLOPs set by its trained gates (budget {cell.config.reducer.flops_budget:g} "
                         "of dense), " + ("none logged yet" if flops is None
                                          else f"{flops:.1f}% of dense logged"))
        else:
            flops_txt = "FLOPs n/a" if flops is None else f"FLOPs {flops:.1f}% of dense"
        try:
            check_cell_config(cell)
        except ValueError as err:
            where += f" — SETTINGS DIFFER, the study will refuse to run: {err}"
        log(f"cell {i}/{len(study.cells)}: {cell.label} seed {cell.seed}: {r.state}{where}; "
            f"{cell.config.framework}/{cell.config.reducer.method}, {flops_txt}; {cell.folder}")
        if r.finetune is not None:
            f, ft = r.finetune, cell.finetune
            at = f" at step {f.step}/{f.total_steps}" if f.step is not None and not f.finished else ""
            log(f"  fine-tuning: {f.state}{at}; supervised/{ft.reducer.method}, {ft.epochs:g} epochs; "
                f"{cell.finetune_folder}")


def run_study(args: argparse.Namespace) -> int:
    """``simprune study``: train the grid (resuming), then write the report. User errors raise
    ``ValueError``/``FileNotFoundError`` (the CLI prints them); returns 0, or
    :data:`~simprune.study.failures.FAILED_EXIT` when a run failed in this sitting (each failed
    run named on stderr with its error and whether rerunning can help)."""
    # The report (FLOPs model, matplotlib) loads here, not at import: `simprune --help` stays light.
    from simprune.study.report import write_report

    if args.time_limit < 0:
        raise ValueError(f"--time-limit must be >= 0 minutes, got {args.time_limit}")
    study = load_study(args.config, args.seeds, args.out, parse_sets(args.set))
    select_methods(study, getattr(args, "methods", None))  # an unknown name fails before anything
    if args.dry_run:
        dry_run(study)
        return 0
    check_report_target(study.out, args.overwrite_report)
    for cell in study.cells:
        check_cell_config(cell)
    command = command_line(args)
    counts: dict[str, float] = {}
    if not args.report_only:
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        entry = {"command": command, "started": started, "seeds": study.seeds,
                 "cells": len(study.cells), "state": "running",
                 "id": sitting_id(started)}
        if is_main():  # logged before the first step: a sitting killed outright (SIGKILL) still shows
            log_sitting(study.out, entry)
        state = "interrupted"
        try:
            run_cells(study, args.time_limit, counts=counts, phase=args.phase,
                      methods=getattr(args, "methods", None))
            state = "ended"
        except Exception:
            state = "failed"
            raise
        finally:
            if is_main():
                entry.update(state=state, wall_seconds=counts.get("seconds", None),
                             cells_trained=counts.get("trained"), cells_finished=counts.get("finished"),
                             cells_failed=counts.get("failed"))
                if any(c.finetune is not None for c in study.cells):
                    entry.update(phase=args.phase, finetunes_run=counts.get("finetuned"),
                                 finetunes_finished=counts.get("finetuned_finished"))
                log_sitting(study.out, entry)
    if not is_main():
        return 0
    log_data = read_log(study.out)
    training = [s for s in log_data.get("sittings", []) if s.get("command")]
    shown = training[-1]["command"] if training else command
    rows, table = write_report(study, study.out, shown, log_data)
    done = sum(r.seeds_finished for r in rows)
    print(f"\n{table}\n\n{done}/{len(study.cells)} cells finished; report: {study.out / 'results.md'}, "
          f"results.csv, cells.csv, tradeoff.png", flush=True)
    failed = report_failures(study) if counts.get("failed") else []
    if done < len(study.cells) and not args.report_only:
        busy = int(counts.get("busy", 0))
        others = "the other " if failed else "the "
        if busy:
            print(f"{busy} cells are being trained by another sitting; when it ends, "
                  "run the same command again (or add --report-only) for the full table", flush=True)
        elif done + len(failed) < len(study.cells) or any(not r.get("deterministic", True)
                                                          for _, r in failed):
            print(f"run the same command again to continue {others}unfinished cells", flush=True)
    return FAILED_EXIT if failed else 0


def report_failures(study: Study) -> list[tuple[Path, dict[str, Any]]]:
    """Print one ``simprune: error:`` line per failed run of the study (training or fine-tuning),
    then how many; returns them."""
    folders = [c.folder for c in study.cells]
    folders += [Path(c.finetune.out) for c in study.cells if c.finetune is not None]
    failed = [(f, r) for f, r in failed_runs(folders) if not is_finished(read_results(f))]
    for folder, rec in failed:
        print(f"simprune: error: {failure_line(rec, folder)}", file=sys.stderr, flush=True)
    if failed:
        print(f"simprune: error: {len(failed)} run(s) of the study failed (study_error.json in "
              f"each folder); exit status {FAILED_EXIT}", file=sys.stderr, flush=True)
    return failed


__all__ = ["LOG_NAME", "PHASES", "check_cell_config", "check_folder_config", "dry_run", "read_log",
           "run_cells", "run_study", "select_methods"]
