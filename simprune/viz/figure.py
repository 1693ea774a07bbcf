"""Figures of the patches kept at each reduction point (the paper's Figures 4 and 5).

One row per :class:`~simprune.viz.trace.PruningTrace` (a method, or a checkpoint of one run); per
global view the columns are the view itself, the view with each point's result overlaid and,
optionally, the original image with the view's crop box drawn and the last point's result mapped
back onto it. Overlays (:mod:`simprune.viz.overlay`): pruned patches dark, patches fused into
EViT's extra token dark orange, ToMe's merge groups (tokens of two or more patches) one colour
each, outside the crop box washed out.

Matplotlib's object API is used (``Figure`` + the Agg canvas), so importing this module changes no
global backend and opens no window.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from simprune.reducers import REDUCERS
from simprune.viz.overlay import original_rgba, point_rgba
from simprune.viz.trace import PruningTrace, ViewPoint

VIEW_COLORS = ("#00c8ff", "#ff3df5")  # crop-box outline of view 1 and view 2
LEGEND = ("dark: pruned   orange: fused into EViT's token   colours: ToMe merge groups (2+ patches)   "
          "white wash: outside the view's crop")


def next_free_path(path: str | Path) -> Path:
    """``path`` if free, else ``stem-1.png``, ``stem-2.png`` ... (never an existing file)."""
    p = Path(path)
    if not p.exists():
        return p
    i = 1
    while (q := p.with_name(f"{p.stem}-{i}{p.suffix}")).exists():
        i += 1
    return q


def save_figure(fig: Figure, path: str | Path, overwrite: bool = False, dpi: int = 150) -> Path:
    """Write ``fig`` as PNG; an existing file is kept and a suffixed name used (unless
    ``overwrite``). Returns the path written."""
    p = Path(path) if overwrite else next_free_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi, format="png")
    return p


def _hwc(img: Tensor) -> np.ndarray:
    """``[C, H, W]`` float -> ``[H, W, C]`` (``[H, W]`` for one channel) numpy."""
    a = img.detach().cpu().float().clamp(0, 1).numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def _show(ax, img: Tensor) -> None:
    a = _hwc(img)
    ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _grid_lines(ax, size: int, grid: tuple[int, int]) -> None:
    gh, gw = grid
    kw = dict(color="white", linewidth=0.3, alpha=0.35)
    for c in range(1, gw):
        ax.axvline(c * size / gw - 0.5, **kw)
    for r in range(1, gh):
        ax.axhline(r * size / gh - 0.5, **kw)


def _title(ax, text: str, size: float = 7.0) -> None:
    ax.set_title(text, fontsize=size, pad=2)


def _draw_view(ax, trace: PruningTrace, v: int, branch: str) -> None:
    _show(ax, trace.views[v])
    _grid_lines(ax, trace.views.shape[-1], trace.grid)
    flip = ", flipped" if bool(trace.flipped[v]) else ""
    side = branch if branch != "pair" else ("student", "teacher")[v]
    _title(ax, f"view {v + 1} ({side}{flip})")


def _draw_point(ax, trace: PruningTrace, v: int, vp: ViewPoint) -> None:
    s = trace.views.shape[-1]
    _show(ax, trace.views[v])
    rgba = point_rgba(vp.ids[None], vp.source[None], trace.grid)[0]
    ax.imshow(rgba, extent=(-0.5, s - 0.5, s - 0.5, -0.5), interpolation="nearest")
    _title(ax, f"v{v + 1} block {vp.block}: {vp.tokens_out}/{vp.source.numel()} tok")


def _draw_original(ax, trace: PruningTrace, v: int, vp: ViewPoint) -> None:
    _, h, w = trace.image.shape
    _show(ax, trace.image)
    scale = max(1, math.ceil(256 / max(h, w)))
    rgba = original_rgba(vp.ids[None], vp.source[None], trace.grid, trace.boxes[v][None],
                         trace.flipped[v][None], (h, w), scale)[0]
    # pixel (i, j) covers [j, j+1) x [i, i+1); imshow puts pixel centres at integers
    ax.imshow(rgba, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
    x0, y0, x1, y1 = (float(t) for t in trace.boxes[v])
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                           edgecolor=VIEW_COLORS[v % 2], linewidth=1.2))
    _title(ax, f"v{v + 1} on image, block {vp.block}")


def row_label(trace: PruningTrace) -> str:
    """Method, then the step (checkpoints) and a pair reducer's window position (SimPrune's)."""
    parts = [trace.label or trace.method]
    if trace.step is not None:
        parts.append(f"step {trace.step}/{trace.total_steps}")
    parts.append(f"t={trace.progress:.2f} keep={trace.keep_rate:.2f}")
    if trace.method in REDUCERS and REDUCERS.get(trace.method).is_pair:  # a window position
        parts.append(f"window p={trace.position:.2f}")
    return "\n".join(parts)


def pruning_figure(traces: list[PruningTrace], branch: str = "student", show_original: bool = True,
                   title: str | None = None, panel: float = 1.55) -> Figure:
    """A grid: one row per trace; per view, the view, each point's overlay and the original.

    Args:
        traces: traces of the same image (same ``seed``, so the same views in every row).
        branch: ``student``, ``teacher`` or ``pair`` (view 1 student, view 2 teacher).
        show_original: add the original image with the crop box and the last point mapped back.
        title: the figure title (default: image size and branch).
    """
    if not traces:
        raise ValueError("no traces to draw")
    n_points = max(len(t.points) for t in traces)
    per_view = 1 + n_points + int(show_original)
    cols, rows = 2 * per_view, len(traces)
    fig = Figure(figsize=(cols * panel + 1.2, rows * (panel + 0.35) + 0.9))  # inches
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, trace in enumerate(traces):
        for v in range(2):
            points = trace.view_points(v, branch)
            base = v * per_view
            _draw_view(axes[r, base], trace, v, branch)
            for i in range(n_points):
                ax = axes[r, base + 1 + i]
                if i < len(points):
                    _draw_point(ax, trace, v, points[i])
                else:
                    ax.axis("off")
            if show_original:
                ax = axes[r, base + 1 + n_points]
                if points:
                    _draw_original(ax, trace, v, points[-1])
                else:
                    _show(ax, trace.image)
        axes[r, 0].set_ylabel(row_label(trace), fontsize=7.5)
    _, h, w = traces[0].image.shape
    head = title or f"kept patches per reduction point ({branch} branch; image {h}x{w})"
    fig.suptitle(f"{head}\n{LEGEND}", fontsize=8.5)
    width, height = cols * panel + 1.2, rows * (panel + 0.35) + 0.9
    fig.subplots_adjust(left=1.1 / width, right=0.995, bottom=0.01, top=1 - 0.75 / height,
                        wspace=0.06, hspace=0.3)
    return fig


def plot_methods(traces: list[PruningTrace], path: str | Path, overwrite: bool = False,
                 **kwargs) -> Path:
    """Figure 4: one row per method on the same image and views; returns the PNG written."""
    return save_figure(pruning_figure(traces, **kwargs), path, overwrite)


def plot_training(traces: list[PruningTrace], path: str | Path, overwrite: bool = False,
                  **kwargs) -> Path:
    """Figure 5: one row per checkpoint of a run (sorted by step); returns the PNG written."""
    traces = sorted(traces, key=lambda t: (t.step is None, t.step or 0))
    kwargs.setdefault("title", f"{traces[0].method}: kept patches across training")
    return save_figure(pruning_figure(traces, **kwargs), path, overwrite)
