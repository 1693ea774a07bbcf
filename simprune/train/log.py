"""Run records: ``metrics.jsonl`` (one JSON object per log step), optional TensorBoard, and a
progress bar with loss, lr and images/s. Only the main process writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends JSON lines; on resume, lines past the checkpoint's step are dropped first so the
    file reads as one uninterrupted run."""

    def __init__(self, path: Path, enabled: bool = True, truncate_after: int | None = None) -> None:
        self.path, self.enabled = path, enabled
        self._tb = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after is not None and path.exists():
            kept = [ln for ln in path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= truncate_after]
            path.write_text("".join(ln + "\n" for ln in kept))
        try:  # TensorBoard when it is installed; metrics.jsonl is the record either way
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(path.parent / "tb"))
        except Exception:
            self._tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, record["step"])


class Progress:
    """tqdm bar (main process) showing loss, lr and images/s."""

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
