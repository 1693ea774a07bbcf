"""What a study cell's folder says about it (and its ``finetune/`` sub-folder about the
fine-tuning run): finished (``results.json`` with the final top-1), stopped (a checkpoint, or
``results.json`` without it), failed (``study_error.json``, written by the runner) or not
started; and a report's :class:`Row` (one method x keep rate over its seeds), which the table and
the plot both read. Nothing here trains."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from simprune.study.recipe import Cell

#: written into a cell's folder when its training fails; removed once it trains again
ERROR_NAME = "study_error.json"


@dataclass
class CellResult:
    """What a cell's folder says about it. ``state``: finished | stopped | not started |
    failed (<message>)."""

    cell: Cell
    state: str
    step: int | None = None
    total_steps: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    finetune: CellResult | None = None  # the cell's fine-tuning run, when the study has one

    @property
    def finished(self) -> bool:
        return self.state == "finished"


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
    metric: str = "knn"  # knn: ``knn`` holds k-NN top-1; test: the classifier's test top-1
    finetune: tuple[float, float] | None = None  # fine-tuning test top-1 (mean, std)
    finetuned: int = 0  # seeds whose fine-tuning finished
    finetune_planned: bool = False  # the study fine-tunes this row's cells


def read_results(folder: Path) -> dict[str, Any] | None:
    path = folder / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def top1_of(results: dict[str, Any] | None) -> float | None:
    """A cell's top-1 (%): k-NN (``knn_top1``, SSL frameworks) or, for a framework that evaluates
    its own classifier (supervised, trilevel), test top-1 (``top1``); ``None`` when neither."""
    if not results:
        return None
    value = results.get("knn_top1", results.get("top1"))
    return None if value is None else float(value)


def top1_metric(results: dict[str, Any] | None) -> str:
    """``knn`` or ``test``: which top-1 :func:`top1_of` reads."""
    return "test" if results and "knn_top1" not in results and "top1" in results else "knn"


def is_finished(results: dict[str, Any] | None) -> bool:
    """A finished cell: ``results.json`` says finished and holds the final top-1 (:func:`top1_of`)."""
    return bool(results and results.get("finished") and top1_of(results) is not None)


def read_run(cell: Cell, folder: Path, peek_checkpoint: bool = True) -> CellResult:
    """The state of the run in ``folder`` (``results.json``, else the checkpoint's step)."""
    res = read_results(folder)
    if is_finished(res):
        return CellResult(cell, "finished", res.get("step"), res.get("total_steps"), res)
    error = folder / ERROR_NAME
    if error.is_file():
        info = json.loads(error.read_text())
        return CellResult(cell, f"failed ({info.get('error', '?')})", info.get("step"))
    if res is not None:
        return CellResult(cell, "stopped", res.get("step"), res.get("total_steps"))
    ckpt = folder / "checkpoint.pt"
    if ckpt.is_file():
        step = total = None
        if peek_checkpoint:
            from simprune.checkpoint import load_checkpoint

            saved = load_checkpoint(ckpt)
            step, total = saved.get("step"), saved.get("total_steps")
        return CellResult(cell, "stopped", step, total)
    return CellResult(cell, "not started")


def read_cell(cell: Cell, peek_checkpoint: bool = True) -> CellResult:
    """The state of ``cell`` from its folder, and of its fine-tuning run when it has one."""
    result = read_run(cell, cell.folder, peek_checkpoint)
    if cell.finetune is not None:
        result.finetune = read_run(cell, Path(cell.finetune.out), peek_checkpoint)
    return result


__all__ = ["ERROR_NAME", "CellResult", "is_finished", "read_cell", "read_results", "read_run", "top1_metric",
           "top1_of"]
