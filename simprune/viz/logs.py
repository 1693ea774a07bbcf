"""``simprune viz logs``: series a run logged (``metrics.jsonl``) against training progress, as a PNG.

One panel per metric, one colour per run (or per group of seeds, averaged), one line style per
reduction point. A metric is a logged key (``loss``, ``window``, ``knn_top1`` from the evaluation
records) or a per-point family, ``m2o`` for ``m2o/p1``, ``m2o/p2``, ... SimPrune's diagnostics
(:func:`~simprune.frameworks.dual.DualBranch.pruning_logs`): ``fill`` (share of the teacher's kept
tokens that came from the CLS-attention fill-up), ``m2o`` (many-to-one), ``dup`` (duplicate
partners among kept pairs), ``sim_kept`` (mean cosine of the pairs in the window), ``sim`` (of all
pairs). Example::

    simprune viz logs --runs runs/a runs/b --metrics fill m2o sim_kept knn_top1

The x axis is training progress ``step / total_steps`` (the run's planned length, from its
``config.json``), or ``--x epoch`` / ``--x step``. ``--table N`` also prints the numbers behind
the panels: each series averaged over N equal parts of training (a Markdown table, written beside the
PNG as ``.md``), e.g. the k-NN at each evaluation and the many-to-one rate over the same stretch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: SimPrune's per-point diagnostics, the default panels
DEFAULT_METRICS = ("fill", "m2o", "dup", "sim_kept")
X_AXES = ("progress", "epoch", "step")
LINE_STYLES = ("-", "--", ":", "-.")
TITLES = {
    "fill": "teacher tokens from the fill-up",
    "m2o": "many-to-one (pruned pairs sharing a kept partner)",
    "dup": "kept pairs with a duplicate partner",
    "sim_kept": "mean cosine of the pairs in the window",
    "sim": "mean cosine of all pairs",
    "window": "window position p",
    "knn_top1": "k-NN top-1 (%)",
}
_POINT = re.compile(r"^(?P<name>.+)/p(?P<point>\d+)$")
_SEED = re.compile(r"^seed\d+$")


@dataclass
class RunLog:
    """The numeric series of one run: ``series[key] = [(step, value), ...]`` in step order."""

    path: Path
    label: str = ""
    steps_per_epoch: float | None = None
    total_steps: int | None = None
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def x(self, step: float, axis: str) -> float:
        if axis == "step":
            return float(step)
        if axis == "epoch":
            if not self.steps_per_epoch:
                raise ValueError(f"{self.path}: no training record gives the epoch; use --x step")
            return step / self.steps_per_epoch
        if not self.total_steps:
            raise ValueError(f"{self.path}: its planned length is unknown (no config.json with "
                             "steps, images_seen or epochs); use --x step or --x epoch")
        return step / self.total_steps


def _metrics_file(path: str | Path) -> Path:
    p = Path(path)
    f = p if p.is_file() else p / "metrics.jsonl"
    if not f.is_file():
        raise FileNotFoundError(f"no metrics.jsonl at {str(p)!r}; pass a run folder (the --out of "
                                "simprune train) or its metrics.jsonl")
    return f


def _planned_steps(config: dict[str, Any], steps_per_epoch: float | None) -> int | None:
    """The run's length in steps from its saved config (as ``planned_steps`` computes it)."""
    steps, images, epochs = (config.get(k) or 0 for k in ("steps", "images_seen", "epochs"))
    if steps:
        return int(steps)
    if images and config.get("batch_size"):
        return math.ceil(images / config["batch_size"])
    if epochs and steps_per_epoch:
        return int(math.ceil(epochs * round(steps_per_epoch)))
    return None


def read_run(path: str | Path) -> RunLog:
    """Every numeric series of a run folder's ``metrics.jsonl`` (evaluation records included)."""
    from simprune.records import read_records

    f = _metrics_file(path)
    run = RunLog(f.parent)
    for rec, _ in read_records(f):
        step = rec.get("step")
        if not isinstance(step, int):
            continue
        values = rec["eval"] if isinstance(rec.get("eval"), dict) else rec
        if "epoch" in rec and rec.get("epoch") and step:
            run.steps_per_epoch = step / rec["epoch"]
        for k, v in values.items():
            if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
                run.series.setdefault(k, []).append((step, float(v)))
    cfg_file = f.parent / "config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        run.total_steps = _planned_steps(cfg, run.steps_per_epoch)
    return run


def series_keys(run: RunLog, metric: str) -> list[tuple[str, int | None]]:
    """``[(key, point)]`` a metric names in a run: the key itself, or its per-point keys in order."""
    if metric in run.series:
        return [(metric, None)]
    found = []
    for key in run.series:
        m = _POINT.match(key)
        if m and m["name"] == metric:
            found.append((key, int(m["point"])))
    return sorted(found, key=lambda kp: kp[1])


def available(runs: Sequence[RunLog]) -> list[str]:
    """The metric names the runs logged (per-point families by their name)."""
    names = {(_POINT.match(k)["name"] if _POINT.match(k) else k) for r in runs for k in r.series}
    return sorted(names)


def label_runs(runs: Sequence[RunLog]) -> None:
    """Label each run by the shortest tail of its path that tells it from the others."""
    parts = [r.path.resolve().parts for r in runs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            break
    for r, lab in zip(runs, labels):
        r.label = r.label or lab


def mean_over_seeds(runs: Sequence[RunLog]) -> list[RunLog]:
    """Runs in folders ``<method>/seed<N>`` averaged per method, at the steps all of them logged
    (the label says how many seeds); other runs are kept as they are."""
    groups: dict[Path, list[RunLog]] = {}
    for r in runs:
        key = r.path.resolve().parent if _SEED.match(r.path.name) else r.path.resolve()
        groups.setdefault(key, []).append(r)
    out = []
    for key, members in groups.items():
        if len(members) == 1:
            out.append(members[0])
            continue
        first = members[0]
        merged = RunLog(key, steps_per_epoch=first.steps_per_epoch, total_steps=first.total_steps)
        for name in first.series:
            per = [dict(m.series.get(name, [])) for m in members]
            steps = sorted(set.intersection(*(set(p) for p in per)))
            merged.series[name] = [(s, sum(p[s] for p in per) / len(per)) for s in steps]
        out.append(merged)
        merged.label = f"{key.name} (mean of {len(members)} seeds)"
    return out


def check_x(x: str) -> None:
    """One clear line for an unknown ``--x``."""
    if x not in X_AXES:
        raise ValueError(f"--x {x!r}; valid: {', '.join(X_AXES)}")


def plot_logs(runs: Sequence[RunLog], metrics: Sequence[str], path: str | Path, x: str = "progress",
              title: str | None = None) -> Path:
    """One panel per metric; returns the path written (an existing file is never overwritten)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from simprune.viz.figure import save_figure

    check_x(x)
    missing = [m for m in metrics if not any(series_keys(r, m) for r in runs)]
    if missing:
        raise ValueError(f"no run logged {', '.join(map(repr, missing))}; logged: "
                         f"{', '.join(available(runs))}")
    cols = min(2, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(6.0 * cols, 3.6 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    points: set[int] = set()
    for ax, metric in zip(axes, metrics):
        for i, run in enumerate(runs):
            for key, point in series_keys(run, metric):
                data = run.series[key]
                style = LINE_STYLES[(point - 1) % len(LINE_STYLES)] if point else "-"
                points |= {point} if point else set()
                ax.plot([run.x(s, x) for s, _ in data], [v for _, v in data], color=f"C{i % 10}",
                        linestyle=style, linewidth=1.2, marker="o" if len(data) <= 12 else None,
                        markersize=3)
        ax.set_title(TITLES.get(metric, metric), fontsize=9)
        ax.set_xlabel({"progress": "training progress (step / total steps)", "epoch": "epoch",
                       "step": "step"}[x], fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if x == "progress":
            ax.set_xlim(0.0, 1.0)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=f"C{i % 10}", label=r.label) for i, r in enumerate(runs)]
    handles += [Line2D([], [], color="0.3", linestyle=LINE_STYLES[(p - 1) % len(LINE_STYLES)],
                       label=f"point {p}") for p in sorted(points)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


#: a value this close (as a share of one part) past a part's end still belongs to it: an evaluation
#: every 0.75 epochs lands on step 586 of 2,343, a hair past a quarter of the run
_PART_SLACK = 0.01


def part_of(progress: float, parts: int) -> int:
    """Which of ``parts`` equal parts of training ``progress`` (in [0, 1]) falls in; each part
    holds its right end (the evaluation that closes it), with :data:`_PART_SLACK`."""
    return min(parts - 1, max(0, math.ceil(progress * parts - _PART_SLACK) - 1))


def segment_table(runs: Sequence[RunLog], metrics: Sequence[str], parts: int, x: str = "progress") -> str:
    """A Markdown table: one row per run and series (per point for a family), one column per equal
    part of training, each cell the mean of the values logged in that part (empty if none).
    Columns are headed by the part's span in ``x`` units (the first run's, for ``epoch``/``step``)."""
    if parts < 1:
        raise ValueError(f"--table {parts}; give the number of parts of training, 1 or more")
    check_x(x)
    for r in runs:
        if not r.total_steps:
            raise ValueError(f"{r.path}: its planned length is unknown (no config.json), so its "
                             "series cannot be split into parts of training; leave out --table")
    first = runs[0]

    def at(share: float) -> str:
        step = share * first.total_steps
        return f"{first.x(step, x):.3g}" if x != "step" else f"{round(step)}"

    head = ["run", "series"] + [f"{at(i / parts)}–{at((i + 1) / parts)}" for i in range(parts)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric in metrics:
        for run in runs:
            for key, _ in series_keys(run, metric):
                sums, counts = [0.0] * parts, [0] * parts
                for step, value in run.series[key]:
                    i = part_of(step / run.total_steps, parts)
                    sums[i] += value
                    counts[i] += 1
                cells = [f"{s / c:.4g}" if c else "" for s, c in zip(sums, counts)]
                lines.append("| " + " | ".join([run.label, key] + cells) + " |")
    return "\n".join(lines) + "\n"


def run_logs(run_paths: Sequence[str], metrics: Sequence[str] | None, x: str, out: str | None,
             mean_seeds: bool = False, table: int | None = None) -> Path:
    """``simprune viz logs``: read the runs, plot, print and return the PNG's path; with
    ``table`` also print :func:`segment_table` and write it beside the PNG (``.md``)."""
    if not run_paths:
        raise ValueError("viz logs needs --runs RUN [RUN ...] (run folders holding metrics.jsonl)")
    runs = [read_run(p) for p in run_paths]
    label_runs(runs)
    if mean_seeds:
        runs = mean_over_seeds(runs)
    metrics = list(metrics or DEFAULT_METRICS)
    target = Path(out or "viz")
    if target.suffix.lower() != ".png":
        target = target / f"logs_{'-'.join(m.replace('/', '_') for m in metrics)}_{x}.png"
    text = segment_table(runs, metrics, table, x) if table is not None else None
    written = plot_logs(runs, metrics, target, x)
    note = "" if written == target else f" ({target.name} exists and was kept)"
    print(f"wrote {written}{note}")
    if text is not None:
        from simprune.atomic import atomic_write_text

        atomic_write_text(written.with_suffix(".md"), text)
        print(text, end="")
        print(f"wrote {written.with_suffix('.md')}")
    return written
