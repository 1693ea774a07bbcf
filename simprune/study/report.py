"""The report of an accuracy study (:mod:`simprune.study`), read from its cell folders.

Nothing here trains: every figure comes from the cells' ``results.json`` (accuracy, training
seconds, :mod:`simprune.study.results`) and from the analytic FLOPs model applied to the cell's
config (:mod:`simprune.study.flops`). Files written into the study's out folder:

- ``results.csv``: one row per method × keep rate — mean and sample std over the finished seeds of
  k-NN and linear top-1 (and of fine-tuning top-1, for a study with ``[finetune]``), training FLOPs
  and time as % of dense, seeds finished.
- ``cells.csv``: one row per cell (method × keep rate × seed) with its own figures and state.
- ``results.md``: the table in Markdown, the command, seeds, wall time and unfinished cells.
- ``tradeoff.png``: accuracy (k-NN and linear) against training FLOPs % of dense
  (:mod:`simprune.study.plots`).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simprune.config import TrainConfig, owns_flops_budget
from simprune.study.flops import cell_flops_percent
from simprune.study.plots import write_plot
from simprune.study.results import CellResult, Row, read_cell, top1_metric, top1_of

if TYPE_CHECKING:  # pragma: no cover
    from simprune.study.recipe import Study

RESULTS_CSV, CELLS_CSV, RESULTS_MD, PLOT_PNG = "results.csv", "cells.csv", "results.md", "tradeoff.png"
REPORT_FILES = (RESULTS_CSV, CELLS_CSV, RESULTS_MD, PLOT_PNG)
CSV_COLUMNS = [
    "method", "reducer", "keep_rate", "seeds_finished", "seeds_planned", "knn_top1_mean",
    "knn_top1_std", "linear_top1_mean", "linear_top1_std", "flops_pct_of_dense",
    "time_pct_of_dense", "train_seconds_mean", "test_top1_mean", "test_top1_std",
    "finetune_top1_mean", "finetune_top1_std", "finetunes_finished",
]
CELL_COLUMNS = [
    "method", "reducer", "keep_rate", "seed", "state", "step", "total_steps", "knn_top1", "knn_top5",
    "linear_top1", "train_seconds", "folder", "top1", "finetune_state", "finetune_top1",
]


def held_note(cfg: Any) -> str:
    """``" of the N held out"``: where a run's labelled images come from when ``held_out`` keeps
    part of the training split out of training (the k-NN bank, the linear probe, and a run with
    ``train_on = "held_out"``); ``""`` otherwise."""
    return f" of the {cfg.held_out} held out" if cfg.held_out else ""


def mean_std(values: Sequence[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (``nan`` with one value); ``None`` when empty."""
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def aggregate(results: Sequence[CellResult]) -> list[Row]:
    """Rows in the study's order of methods and keep rates; time % relative to the first dense
    method's mean training seconds."""
    groups: dict[tuple[str, float | None], list[CellResult]] = {}
    for r in results:
        groups.setdefault((r.cell.method, r.cell.keep_rate), []).append(r)
    rows = []
    for (method, rate), members in groups.items():
        done = [m for m in members if m.finished]
        knn = [float(top1_of(m.metrics)) for m in done]  # k-NN, or test top-1 of a classifier
        metric = "test" if any(top1_metric(m.metrics) == "test" for m in done) else "knn"
        lin = [float(m.metrics["linear_top1"]) for m in done if "linear_top1" in m.metrics]
        secs = [float(m.metrics["train_seconds"]) for m in done if "train_seconds" in m.metrics]
        tuned = [m.finetune for m in done if m.finetune is not None and m.finetune.finished]
        ft = [float(top1_of(t.metrics)) for t in tuned]
        cfg = members[0].cell.config
        rows.append(Row(method, cfg.reducer.method, rate, len(members), len(done), mean_std(knn),
                        mean_std(lin), cell_flops_percent(cfg, [m.cell.folder for m in done]),
                        statistics.fmean(secs) if secs else None,
                        metric=metric, finetune=mean_std(ft), finetuned=len(ft),
                        finetune_planned=members[0].cell.finetune is not None))
    dense = next((r for r in rows if r.reducer == "dense" and r.train_seconds and r.flops_pct != 0.0),
                 None)  # not a run of no steps (a random-weights baseline)
    for r in rows:
        if dense is not None and r.train_seconds is not None:
            r.time_pct = 100.0 * r.train_seconds / dense.train_seconds
    return rows


# ----------------------------------------------------------------------------- files


def _num(x: float | None, digits: int = 4) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            top, lin = r.knn or (None, None), r.linear or (None, None)
            knn, test = (top, (None, None)) if r.metric == "knn" else ((None, None), top)
            ft = r.finetune or (None, None)
            w.writerow([r.method, r.reducer, _num(1.0 if r.keep_rate is None else r.keep_rate, 3),
                        r.seeds_finished, r.seeds_planned, _num(knn[0]), _num(knn[1]), _num(lin[0]),
                        _num(lin[1]), _num(r.flops_pct, 3), _num(r.time_pct, 2),
                        _num(r.train_seconds, 2), _num(test[0]), _num(test[1]), _num(ft[0]),
                        _num(ft[1]), r.finetuned if r.finetune_planned else ""])


def write_cells_csv(results: Sequence[CellResult], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CELL_COLUMNS)
        for r in results:
            c, m = r.cell, r.metrics
            rate = 1.0 if c.keep_rate is None else c.keep_rate
            ft = r.finetune
            ft_top1 = top1_of(ft.metrics) if ft is not None and ft.finished else None
            w.writerow([c.method, c.config.reducer.method, _num(rate, 3),
                        c.seed, r.state, "" if r.step is None else r.step,
                        "" if r.total_steps is None else r.total_steps, _num(m.get("knn_top1")),
                        _num(m.get("knn_top5")), _num(m.get("linear_top1")),
                        _num(m.get("train_seconds"), 2), str(c.folder), _num(m.get("top1")),
                        "" if ft is None else ft.state, _num(ft_top1)])


def _pm(stat: tuple[float, float] | None) -> str:
    if stat is None:
        return "—"
    mean, std = stat
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def markdown_table(rows: Sequence[Row]) -> str:
    test = any(r.metric == "test" for r in rows) and not any(r.metric == "knn" and r.knn for r in rows)
    top1 = "Test top-1 (%)" if test else "k-NN top-1 (%)"
    tuned = any(r.finetune_planned for r in rows)
    ft_head, ft_rule = (" Fine-tune top-1 (%) |", " ---: |") if tuned else ("", "")
    ft_done = " Fine-tuned |" if tuned else ""
    lines = [f"| Method | Keep rate | {top1} | Linear top-1 (%) |{ft_head} Training FLOPs (% of dense) "
             f"| Training time (% of dense) | Seeds finished |{ft_done}",
             f"| --- | ---: | ---: | ---: |{ft_rule} ---: | ---: | ---: |{ft_rule}"]
    for r in rows:
        # a run without token pruning that is not the dense reference (e.g. a sample filter's
        # cell, which trains on fewer examples): no keep rate of its own to show
        dense = r.flops_pct is None or abs(r.flops_pct - 100.0) < 1e-6
        rate = ("1 (dense)" if dense else "—") if r.keep_rate is None else f"{r.keep_rate:g}"
        flops = "—" if r.flops_pct is None else f"{r.flops_pct:.1f}"
        time_ = "—" if r.time_pct is None else f"{r.time_pct:.1f}"
        ft = f" {_pm(r.finetune)} |" if tuned else ""
        done = f" {r.finetuned}/{r.seeds_planned} |" if tuned else ""
        lines.append(f"| {r.method} | {rate} | {_pm(r.knn)} | {_pm(r.linear)} |{ft} {flops} | {time_} "
                     f"| {r.seeds_finished}/{r.seeds_planned} |{done}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{seconds:.0f} s" if seconds < 120 else (
        f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.2f} h")


def write_markdown(study: Study, rows: Sequence[Row], results: Sequence[CellResult], command: str,
                   log: dict[str, Any], path: Path) -> None:
    sittings = log.get("sittings", [])
    wall = sum(s.get("wall_seconds") or 0.0 for s in sittings)  # None: a sitting still running or killed
    trained = sum(float(r.metrics.get("train_seconds", 0.0)) for r in results if r.finished)
    base = study.cells[0].config if study.cells else TrainConfig()
    frameworks = "/".join(dict.fromkeys(c.config.framework for c in study.cells)) or base.framework
    points = sorted({tuple(c.config.reducer.reduce_at) for c in study.cells
                     if c.config.reducer.method != "dense"})
    pruning = "" if not points else ", pruning at blocks " + " or ".join(str(p) for p in points)
    owned = {r.reducer for r in rows if owns_flops_budget(r.reducer)}
    lines = [f"# Study `{study.name}`", ""]
    if study.description:
        lines += [study.description.strip(), ""]
    lines += [markdown_table(rows), "",
              f"- Command: `{command}`",
              f"- Seeds: {', '.join(str(s) for s in study.seeds)} (mean ± sample std over the finished "
              "seeds; no ± with one seed)",
              f"- Recipe: `{study.path}` on base `{study.base_path}` — {frameworks}, {base.model}, "
              f"{base.dataset}, {base.epochs:g} epochs, batch {base.batch_size}{pruning}; k-NN "
              f"k={base.knn_k} on {base.knn_train or 'all'} train{held_note(base)} / "
              f"{base.knn_test or 'all'} test images, linear probe on the same frozen features",
              f"- Total wall time: {_duration(wall)} over {len(sittings)} sitting(s) (training steps "
              f"alone, summed over cells: {_duration(trained)})",
              "- Training FLOPs: counted on one real training step of each cell's config "
              "(`simprune.bench.flops`: student forward + backward, teacher forward, heads, matrix "
              "work of reducers and matching), as % of the same step dense; averaged over training "
              "when a keep-rate warm-up is set; times the steps per epoch of a sample filter's subset "
              "(Tri-Level's example level) over those of the whole training set.",
              *([f"- Training FLOPs of {', '.join(sorted(owned))}: the mean of the `flops` its runs "
                 "logged (its gates choose how many tokens each batch keeps, so no step counted from "
                 "its config says what it cost): the padded batch's fraction, gates and matching "
                 "included, patch embedding and heads left out, every `log_every`-th step, the "
                 "warm-up's included."] if owned else []),
              "- Training time: mean `train_seconds` of the cell's finished seeds over that of dense, "
              "summed over sittings, on the machine(s) that ran them. Wall time on a shared machine "
              "is noisy: read it as indicative; `simprune bench micro` measures interleaved ratios."]
    tuned = [r for r in results if r.cell.finetune is not None]
    if tuned:
        ft = tuned[0].cell.finetune
        recipe = f"`{study.finetune_recipe}`" if study.finetune_recipe else "the defaults"
        keys = ", ".join(f"{k} = {v!r}" for k, v in (study.finetune_keys or {}).items())
        part = held_note(ft) if ft.train_on == "held_out" else ""
        lines.append(f"- Fine-tuning: every finished cell, from its backbone (same seed, in "
                     f"`<cell>/finetune`), supervised on {ft.dataset} labels with {recipe}"
                     f"{' and ' + keys if keys else ''}: {ft.epochs:g} epochs on "
                     f"{ft.train_subset or 'all'} training images{part}, batch "
                     f"{ft.batch_size}, lr "
                     f"{ft.lr:g}, {ft.fw.pool} pooling; top-1 of the final epoch on "
                     f"{ft.knn_test or 'all'} test images (no selection over epochs). Methods may "
                     "change the fine-tuning keys (e.g. pruning only at fine-tuning time).")
    pending = [r for r in results if not r.finished]
    unfinished_ft = [r for r in tuned if r.finished and not (r.finetune and r.finetune.finished)]
    if pending:
        lines.append(f"- Unfinished cells ({len(pending)} of {len(results)}; not in the means — run the "
                     "command again to continue):")
        for r in pending:
            where = "" if r.step is None else f" at step {r.step}" + (
                f"/{r.total_steps}" if r.total_steps is not None else "")
            lines.append(f"  - {r.cell.label} seed {r.cell.seed}: {r.state}{where} (`{r.cell.folder}`)")
    else:
        lines.append(f"- All {len(results)} cells finished.")
    if unfinished_ft:
        lines.append(f"- Fine-tuning unfinished for {len(unfinished_ft)} finished cell(s) (not in the "
                     "means — run the command again, or with --phase finetune):")
        for r in unfinished_ft:
            f = r.finetune
            where = "" if f is None or f.step is None else f" at step {f.step}" + (
                f"/{f.total_steps}" if f.total_steps is not None else "")
            lines.append(f"  - {r.cell.label} seed {r.cell.seed}: {f.state if f else '?'}{where} "
                         f"(`{r.cell.finetune_folder}`)")
    path.write_text("\n".join(lines) + "\n")


def write_report(study: Study, out: Path, command: str, log: dict[str, Any]) -> tuple[list[Row], str]:
    """Read every cell and write the report files into ``out``; returns the rows and the table."""
    results = [read_cell(c) for c in study.cells]
    rows = aggregate(results)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / RESULTS_CSV)
    write_cells_csv(results, out / CELLS_CSV)
    write_markdown(study, rows, results, command, log, out / RESULTS_MD)
    write_plot(rows, out / PLOT_PNG, study.name)
    return rows, markdown_table(rows)


__all__ = [
    "CELL_COLUMNS", "CSV_COLUMNS", "REPORT_FILES", "Row", "aggregate", "markdown_table", "mean_std",
    "write_cells_csv", "write_csv", "write_markdown", "write_report",
]
