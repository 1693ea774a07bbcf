"""The trade-off figure of a study: accuracy against training FLOPs % of dense."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from simprune.study.results import Row

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
    """k-NN and linear top-1 (a classifier's study: test top-1, and linear top-1 only if a row has
    one; fine-tuning top-1 for a study that fine-tunes) against training FLOPs % of dense, one
    marker and colour per method,
    error bars = std over seeds, each point labelled with its keep rate (in the title instead when
    the study has only one). Points with fewer finished seeds than the best-covered one are drawn
    hollow and labelled with their seed count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tuned = any(getattr(r, "finetune_planned", False) for r in rows)
    test = any(getattr(r, "metric", "knn") == "test" for r in rows)
    first = "test top-1 (%)" if test else "k-NN top-1 (%)"  # a classifier's study (supervised)
    keys = [("knn", first)]
    if not test or any(getattr(r, "linear", None) for r in rows):  # a classifier has no probe
        keys.append(("linear", "linear top-1 (%)"))
    if tuned:
        keys.append(("finetune", "fine-tune top-1 (%)"))
    fig, grid = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), constrained_layout=True,
                             squeeze=False)
    axes = list(grid[0])
    colours = plt.get_cmap("tab10").colors
    methods = list(dict.fromkeys(r.method for r in rows))
    most = max((r.seeds_finished for r in rows), default=0)
    # One keep rate across the study (Table 2): it goes in the title instead of on every point.
    rates = {r.keep_rate for r in rows if r.keep_rate is not None}
    shared_rate = rates.pop() if len(rates) == 1 else None
    plotted = False
    metrics = [(ax, key, label) for ax, (key, label) in zip(axes, keys)]
    for ax, key, label in metrics:
        for i, method in enumerate(methods):
            pts = sorted((r.flops_pct, getattr(r, key), r.keep_rate,
                          r.finetuned if key == "finetune" else r.seeds_finished) for r in rows
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
            if len(pts) == 1 and pts[0][2] is None and abs(xs[0] - 100.0) < 1e-6:
                # the dense reference (runs once, 100% of its FLOPs): a line across the panel
                ax.axhline(ys[0], color=colour, linestyle=":", linewidth=1, alpha=0.7)
        ax.margins(x=0.1)  # room for the labels left of the lowest-cost points
        ax.set_xlabel("training FLOPs (% of dense)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if plotted:
        counts = [len(ax.get_legend_handles_labels()[0]) for ax in axes]
        if max(counts) > 0:  # the last panel naming the most methods (a study may fill one metric
            # only, or fine-tune some cells only)
            axes[max(range(len(axes)), key=lambda i: (counts[i], i))].legend(fontsize=8, loc="best")
    else:
        for ax in axes:
            ax.text(0.5, 0.5, "no finished cells yet", ha="center", va="center", transform=ax.transAxes)
    note = f"error bars: std over seeds; hollow: fewer than {most} seeds" if most > 1 else "1 seed"
    if shared_rate is not None:
        note = f"keep rate {shared_rate:g}; {note}"
    sep = "\n" if len(axes) == 1 else " "  # one panel: the note on a second line, not cut off
    fig.suptitle(f"{title}: accuracy vs training cost{sep}({note})", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["LABEL_OFFSETS", "MARKERS", "point_label", "write_plot"]
