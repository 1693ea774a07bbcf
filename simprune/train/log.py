"""Run records: ``metrics.jsonl`` (one JSON object per log step), optional TensorBoard, and a
progress bar with loss, lr and images/s. Only the main process writes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simprune.atomic import atomic_write_text
from simprune.records import read_records


class MetricsLog:
    """Appends JSON lines; on resume, lines past the checkpoint's step are dropped first so the
    file reads as one uninterrupted run.

    A run killed while it appended leaves a torn last line: it is dropped when the run resumes,
    with one line on stderr. A line that does not read as JSON anywhere else is an error naming
    the file and the line (it was not written by simprune's append, so nothing is guessed).
    """

    def __init__(self, path: Path, enabled: bool = True, truncate_after: int | None = None) -> None:
        self.path, self.enabled = path, enabled
        self._tb = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after is not None and path.exists():
            records = read_records(path, repair=True)
            kept = [ln for rec, ln in records if rec.get("step", 0) <= truncate_after]
            self._rewrite(kept)
        try:  # TensorBoard when it is installed; metrics.jsonl is the record either way
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(path.parent / "tb"))
        except Exception:
            self._tb = None

    def _rewrite(self, lines: list[str]) -> None:
        text = "".join(ln + "\n" for ln in lines)
        if not self.path.exists() or self.path.read_text(errors="replace") != text:
            atomic_write_text(self.path, text)

    def drop(self, which: Callable[[dict[str, Any]], bool]) -> None:
        """Remove the records for which ``which(record)`` is true."""
        if self.enabled and self.path.exists():
            self._rewrite([ln for rec, ln in read_records(self.path, repair=True) if not which(rec)])

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        data = (json.dumps(record) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                except OSError:
                    os.ftruncate(fd, start)  # leave no torn line (best effort)
                    raise
            finally:
                os.close(fd)
        except OSError as err:
            raise OSError(err.errno, err.strerror or str(err), str(self.path)) from err
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, record["step"])


class ProgressBar:
    """tqdm bar (main process) showing loss, lr and images/s (not :class:`simprune.frameworks.Progress`,
    which is where training stands)."""

    def __init__(self, total: int, initial: int, enabled: bool, bar: bool = True) -> None:
        self.bar = None
        if enabled and bar and total > 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step",
                            dynamic_ncols=True, mininterval=1.0)
        self.enabled = enabled
        self.total = total
        self._last = initial

    def update(self, step: int, rec: dict[str, Any] | None) -> None:
        if self.bar is not None:
            self.bar.update(step - self._last)
            if rec is not None:
                self.bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                                     img_s=f"{rec['img_per_s']:.0f}", refresh=False)
        elif self.enabled and rec is not None:
            print(f"step {step}/{self.total}  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  "
                  f"{rec['img_per_s']:.0f} img/s", flush=True)
        self._last = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
