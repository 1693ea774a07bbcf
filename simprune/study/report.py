"""The report of an accuracy study (:mod:`simprune.study`), read from its cell folders.

Nothing here trains: every figure comes from the cells' ``results.json`` (accuracy, training
seconds) and from the analytic FLOPs model (:func:`simprune.bench.flops.step_report`) applied to
the cell's config. Files written into the study's out folder:

- ``results.csv``: one row per method × keep rate — mean and sample std over the finished seeds of
  k-NN and linear top-1, training FLOPs and time as % of dense, seeds finished.
- ``cells.csv``: one row per cell (method × keep rate × seed) with its own figures and state.
- ``results.md``: the table in Markdown, the command, seeds, wall time and unfinished cells.
- ``tradeoff.png``: accuracy (k-NN and linear) against training FLOPs % of dense.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simprune.bench.flops import StepConfig, step_flops, step_report
from simprune.train.config import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from simprune.study.runner import Cell, Study

RESULTS_CSV, CELLS_CSV, RESULTS_MD, PLOT_PNG = "results.csv", "cells.csv", "results.md", "tradeoff.png"
REPORT_FILES = (RESULTS_CSV, CELLS_CSV, RESULTS_MD, PLOT_PNG)
CSV_COLUMNS = [
    "method", "reducer", "keep_rate", "seeds_finished", "seeds_planned", "knn_top1_mean",
    "knn_top1_std", "linear_top1_mean", "linear_top1_std", "flops_pct_of_dense",
    "time_pct_of_dense", "train_seconds_mean",
]
CELL_COLUMNS = [
    "method", "reducer", "keep_rate", "seed", "state", "step", "total_steps", "knn_top1", "knn_top5",
    "linear_top1", "train_seconds", "folder",
]


# ----------------------------------------------------------------------------- FLOPs


def step_config(cfg: TrainConfig, keep_rate: float | None = None) -> StepConfig:
    """The analytic-FLOPs description of one training step of ``cfg`` (two global views, the
    config's local views, heads sized as the config builds them)."""
    dense = cfg.method == "dense"
    return StepConfig(
        model=cfg.model, method=cfg.method, keep_rate=cfg.keep_rate if keep_rate is None else keep_rate,
        framework=cfg.framework, batch_size=cfg.batch_size, global_size=cfg.global_size, num_global=2,
        num_local=cfg.local_views, local_size=cfg.local_size, reduce_at=tuple(cfg.reduce_at),
        reducer_kwargs={} if dense else dict(cfg.reducer_options), head_hidden=cfg.head_hidden,
        head_bottleneck=cfg.bottleneck, out_dim=cfg.out_dim, proj_hidden=cfg.moco_hidden,
        proj_dim=cfg.moco_dim, pred_hidden=cfg.moco_hidden)


def flops_ratio(cfg: TrainConfig, grid: int = 200) -> float:
    """Training FLOPs of the run ``cfg`` over the same run dense.

    Without a keep-rate warm-up this is :func:`step_report`'s ``flops_ratio``; with one
    (``keep_warmup``), the per-step cost is averaged over training progress.
    """
    if cfg.method == "dense":
        return 1.0
    start, end = (list(cfg.keep_warmup) + [0.0, 0.0])[:2]
    if end <= 0.0:
        return float(step_report(step_config(cfg))["flops_ratio"])
    from simprune.reducers import KeepRateSchedule

    schedule = KeepRateSchedule(cfg.keep_rate, start, end)
    cost: dict[float, float] = {}
    total = 0.0
    for i in range(grid):
        rate = round(schedule((i + 0.5) / grid), 6)
        if rate not in cost:
            cost[rate] = step_flops(step_config(cfg, rate)).total
        total += cost[rate]
    return total / grid / step_flops(step_config(cfg).dense()).total


def flops_percent(cfg: TrainConfig) -> float | None:
    """``100 · flops_ratio(cfg)``, or ``None`` where the FLOPs model does not cover the method."""
    try:
        return 100.0 * flops_ratio(cfg)
    except (ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- cell results


@dataclass
class CellResult:
    """What a cell's folder says about it. ``state``: finished | stopped | not started |
    failed (<message>)."""

    cell: Cell
    state: str
    step: int | None = None
    total_steps: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state == "finished"


def read_results(folder: Path) -> dict[str, Any] | None:
    path = folder / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def is_finished(results: dict[str, Any] | None) -> bool:
    """A finished cell: ``results.json`` says finished and holds the final k-NN accuracy."""
    return bool(results and results.get("finished") and "knn_top1" in results)


def read_cell(cell: Cell, peek_checkpoint: bool = True) -> CellResult:
    """The state of ``cell`` from its folder (``results.json``, else the checkpoint's step)."""
    res = read_results(cell.folder)
    if is_finished(res):
        return CellResult(cell, "finished", res.get("step"), res.get("total_steps"), res)
    error = cell.folder / "study_error.json"
    if error.is_file():
        info = json.loads(error.read_text())
        return CellResult(cell, f"failed ({info.get('error', '?')})", info.get("step"))
    if res is not None:
        return CellResult(cell, "stopped", res.get("step"), res.get("total_steps"))
    ckpt = cell.folder / "checkpoint.pt"
    if ckpt.is_file():
        step = total = None
        if peek_checkpoint:
            from simprune.train.checkpoint import load_checkpoint

            saved = load_checkpoint(ckpt)
            step, total = saved.get("step"), saved.get("total_steps")
        return CellResult(cell, "stopped", step, total)
    return CellResult(cell, "not started")


# ----------------------------------------------------------------------------- aggregation


@dataclass
class Row:
    """One method × keep rate, over its seeds."""

    method: str
    reducer: str
    keep_rate: float | None  # None: dense (runs once)
    seeds_planned: int
    seeds_finished: int
    knn: tuple[float, float] | None  # (mean, std); std is nan with one seed
    linear: tuple[float, float] | None
    flops_pct: float | None
    train_seconds: float | None
    time_pct: float | None = None


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
        knn = [float(m.metrics["knn_top1"]) for m in done]
        lin = [float(m.metrics["linear_top1"]) for m in done if "linear_top1" in m.metrics]
        secs = [float(m.metrics["train_seconds"]) for m in done if "train_seconds" in m.metrics]
        cfg = members[0].cell.config
        rows.append(Row(method, cfg.method, rate, len(members), len(done), mean_std(knn),
                        mean_std(lin), flops_percent(cfg), statistics.fmean(secs) if secs else None))
    dense = next((r for r in rows if r.reducer == "dense" and r.train_seconds), None)
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
            knn, lin = r.knn or (None, None), r.linear or (None, None)
            w.writerow([r.method, r.reducer, _num(1.0 if r.keep_rate is None else r.keep_rate, 3),
                        r.seeds_finished, r.seeds_planned, _num(knn[0]), _num(knn[1]), _num(lin[0]),
                        _num(lin[1]), _num(r.flops_pct, 3), _num(r.time_pct, 2),
                        _num(r.train_seconds, 2)])


def write_cells_csv(results: Sequence[CellResult], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CELL_COLUMNS)
        for r in results:
            c, m = r.cell, r.metrics
            w.writerow([c.method, c.config.method, _num(1.0 if c.keep_rate is None else c.keep_rate, 3),
                        c.seed, r.state, "" if r.step is None else r.step,
                        "" if r.total_steps is None else r.total_steps, _num(m.get("knn_top1")),
                        _num(m.get("knn_top5")), _num(m.get("linear_top1")),
                        _num(m.get("train_seconds"), 2), str(c.folder)])


def _pm(stat: tuple[float, float] | None) -> str:
    if stat is None:
        return "—"
    mean, std = stat
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| Method | Keep rate | k-NN top-1 (%) | Linear top-1 (%) | Training FLOPs (% of dense) "
             "| Training time (% of dense) | Seeds finished |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        rate = "1 (dense)" if r.keep_rate is None else f"{r.keep_rate:g}"
        flops = "—" if r.flops_pct is None else f"{r.flops_pct:.1f}"
        time_ = "—" if r.time_pct is None else f"{r.time_pct:.1f}"
        lines.append(f"| {r.method} | {rate} | {_pm(r.knn)} | {_pm(r.linear)} | {flops} | {time_} "
                     f"| {r.seeds_finished}/{r.seeds_planned} |")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{seconds:.0f} s" if seconds < 120 else (
        f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.2f} h")


def write_markdown(study: Study, rows: Sequence[Row], results: Sequence[CellResult], command: str,
                   log: dict[str, Any], path: Path) -> None:
    sittings = log.get("sittings", [])
    wall = sum(s.get("wall_seconds", 0.0) for s in sittings)
    trained = sum(float(r.metrics.get("train_seconds", 0.0)) for r in results if r.finished)
    base = study.cells[0].config if study.cells else TrainConfig()
    lines = [f"# Study `{study.name}`", ""]
    if study.description:
        lines += [study.description.strip(), ""]
    lines += [markdown_table(rows), "",
              f"- Command: `{command}`",
              f"- Seeds: {', '.join(str(s) for s in study.seeds)} (mean ± sample std over the finished "
              "seeds; no ± with one seed)",
              f"- Recipe: `{study.path}` on base `{study.base_path}` — {base.framework}, {base.model}, "
              f"{base.dataset}, {base.epochs:g} epochs, batch {base.batch_size}, pruning at blocks "
              f"{tuple(base.reduce_at)}; k-NN k={base.knn_k} on {base.knn_train or 'all'} train / "
              f"{base.knn_test or 'all'} test images, linear probe on the same frozen features",
              f"- Total wall time: {_duration(wall)} over {len(sittings)} sitting(s) (training steps "
              f"alone, summed over cells: {_duration(trained)})",
              "- Training FLOPs: analytic (`simprune.bench.flops.step_report` on each cell's config: "
              "student forward + backward, teacher forward, heads, reducer work and matching), "
              "as % of the same step dense; averaged over training when a keep-rate warm-up is set.",
              "- Training time: mean `train_seconds` of the cell's finished seeds over that of dense, "
              "summed over sittings, on the machine(s) that ran them. Wall time on a shared machine "
              "is noisy: read it as indicative; `simprune bench micro` measures interleaved ratios."]
    pending = [r for r in results if not r.finished]
    if pending:
        lines.append(f"- Unfinished cells ({len(pending)} of {len(results)}; not in the means — run the "
                     "command again to continue):")
        for r in pending:
            where = "" if r.step is None else f" at step {r.step}" + (
                f"/{r.total_steps}" if r.total_steps is not None else "")
            lines.append(f"  - {r.cell.label} seed {r.cell.seed}: {r.state}{where} (`{r.cell.folder}`)")
    else:
        lines.append(f"- All {len(results)} cells finished.")
    path.write_text("\n".join(lines) + "\n")


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def point_label(keep_rate: float | None, seeds: int, most: int) -> str:
    """A trade-off point's label: its keep rate, plus its seed count when it has fewer finished
    seeds than the study's best-covered point (so a single-seed point is not read as a mean)."""
    parts = [f"{keep_rate:g}"] if keep_rate is not None else []
    if seeds < most:
        parts.append(f"{seeds} seed" + ("s" if seeds != 1 else ""))
    return ", ".join(parts)


# Where each method's point labels sit relative to the point (in points), so that two methods with
# nearly the same cost and accuracy do not print their labels on top of each other.
LABEL_OFFSETS = ((4, 4), (4, -10), (-22, 4), (-22, -10))


def write_plot(rows: Sequence[Row], path: Path, title: str) -> None:
    """k-NN and linear top-1 against training FLOPs % of dense, one marker and colour per method,
    error bars = std over seeds, each point labelled with its keep rate (in the title instead when
    the study has only one). Points with fewer finished seeds than the best-covered one are drawn
    hollow and labelled with their seed count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    colours = plt.get_cmap("tab10").colors
    methods = list(dict.fromkeys(r.method for r in rows))
    most = max((r.seeds_finished for r in rows), default=0)
    # One keep rate across the study (Table 2): it goes in the title instead of on every point.
    rates = {r.keep_rate for r in rows if r.keep_rate is not None}
    shared_rate = rates.pop() if len(rates) == 1 else None
    plotted = False
    for ax, key, label in ((axes[0], "knn", "k-NN top-1 (%)"), (axes[1], "linear", "linear top-1 (%)")):
        for i, method in enumerate(methods):
            pts = sorted((r.flops_pct, getattr(r, key), r.keep_rate, r.seeds_finished) for r in rows
                         if r.method == method and r.flops_pct is not None and getattr(r, key))
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ys = [p[1][0] for p in pts]
            err = [0.0 if math.isnan(p[1][1]) else p[1][1] for p in pts]
            colour, marker = colours[i % 10], MARKERS[i % len(MARKERS)]
            offset = LABEL_OFFSETS[i % len(LABEL_OFFSETS)]
            ax.errorbar(xs, ys, yerr=err, marker=marker, color=colour,
                        capsize=3, linestyle="-" if len(pts) > 1 else "none", label=method)
            for x, y, (_, _, rate, seeds) in zip(xs, ys, pts):
                if seeds < most:
                    ax.plot([x], [y], marker=marker, color=colour, markerfacecolor="white", linestyle="none",
                            zorder=3)
                text = point_label(None if shared_rate is not None else rate, seeds, most)
                if text:
                    ax.annotate(text, (x, y), textcoords="offset points", xytext=offset, fontsize=7,
                                color=colour)
            plotted = True
            if len(pts) == 1 and pts[0][2] is None:  # dense (runs once): a reference line
                ax.axhline(ys[0], color=colour, linestyle=":", linewidth=1, alpha=0.7)
        ax.margins(x=0.1)  # room for the labels left of the lowest-cost points
        ax.set_xlabel("training FLOPs (% of dense)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if plotted:
        axes[1].legend(fontsize=8, loc="best")
    else:
        for ax in axes:
            ax.text(0.5, 0.5, "no finished cells yet", ha="center", va="center", transform=ax.transAxes)
    note = f"error bars: std over seeds; hollow: fewer than {most} seeds" if most > 1 else "1 seed"
    if shared_rate is not None:
        note = f"keep rate {shared_rate:g}; {note}"
    fig.suptitle(f"{title}: accuracy vs training cost ({note})", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    "CELL_COLUMNS", "CSV_COLUMNS", "REPORT_FILES", "CellResult", "Row", "aggregate", "flops_percent",
    "flops_ratio", "is_finished", "markdown_table", "mean_std", "point_label", "read_cell", "read_results",
    "step_config", "write_plot", "write_report",
]
