"""Atomic checkpoints: write to a temporary file in the same folder, fsync, then rename.

A checkpoint holds everything needed to continue exactly: model (student and teacher), optimizer,
grad scaler, step, data position, RNG states and the config it was made with.

Reading one checks it first: an empty, truncated or damaged file (a zip member failing its CRC)
or a file that is not a simprune checkpoint raises :class:`CheckpointError`, naming the file and
what is wrong, never a bare ``torch.load`` traceback. :func:`newest_intact_copy` finds the newest
readable ``checkpoint_<step>.pt`` copy (``--keep-every``) to resume from instead.
:func:`load_resumable` also refuses a checkpoint whose weights or optimizer state hold NaN or inf.
"""

from __future__ import annotations

import random
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simprune.atomic import atomic_write
from simprune.finite import describe_nonfinite, nonfinite_names, state_tensors

CKPT_NAME = "checkpoint.pt"
#: the copies ``--keep-every`` keeps: ``checkpoint_<step, 7 digits>.pt``
KEPT_PATTERN = re.compile(r"checkpoint_(\d+)\.pt")
#: what every simprune checkpoint holds
REQUIRED_KEYS = ("config", "framework", "step")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: empty, truncated, damaged or not a checkpoint."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path, self.problem = Path(path), problem


def kept_name(step: int) -> str:
    return f"checkpoint_{step:07d}.pt"


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that a crash at any moment leaves the old file or the new
    one, never a partial file."""
    atomic_write(path, lambda f: torch.save(obj, f), mode=0o600)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``, on the CPU. ``FileNotFoundError`` when there is none;
    :class:`CheckpointError` (a ``ValueError``) naming the file and the fault when it is empty,
    truncated, damaged or not a simprune checkpoint."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "is empty (0 bytes): it was cut off before anything was written")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()  # reads every member and checks its CRC
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise CheckpointError(path, f"is truncated or corrupt ({size} bytes; not a complete "
                                    f"checkpoint archive: {err})") from err
    if bad is not None:
        raise CheckpointError(path, f"is corrupt ({size} bytes): its part {bad!r} fails its CRC check")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # any unpickling fault means the same to the user
        raise CheckpointError(path, f"is corrupt ({size} bytes; torch.load: {_first_line(err)})") from err
    if not isinstance(obj, dict) or any(k not in obj for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(obj, dict) or k not in obj]
        raise CheckpointError(path, f"is not a simprune training checkpoint (no {', '.join(missing)})")
    return obj


def load_resumable(path: str | Path) -> dict[str, Any]:
    """:func:`load_checkpoint`, and its weights and optimizer state checked for NaN and inf: a
    checkpoint holding any raises :class:`CheckpointError` naming them, as a damaged file does,
    so that a run never resumes from it silently."""
    obj = load_checkpoint(path)
    framework = obj["framework"] if isinstance(obj.get("framework"), dict) else {}
    optimizer = obj.get("optimizer") if isinstance(obj.get("optimizer"), dict) else None
    bad = nonfinite_names(state_tensors(framework, optimizer))
    if bad:
        raise CheckpointError(path, f"holds NaN or inf values (step {obj['step']}; in "
                                    f"{describe_nonfinite(bad)}): it cannot be resumed from")
    return obj


def kept_copies(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``checkpoint_<step>.pt`` copies in ``run_dir``, newest first."""
    found = []
    for p in Path(run_dir).glob("checkpoint_*.pt"):
        m = KEPT_PATTERN.fullmatch(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def newest_intact_copy(run_dir: str | Path, load: Callable[[Path], dict[str, Any]] = load_checkpoint,
                       ) -> tuple[Path, dict[str, Any], list[CheckpointError]]:
    """The newest ``checkpoint_<step>.pt`` in ``run_dir`` that ``load`` reads without a
    :class:`CheckpointError` (:func:`load_resumable`: also finite), its contents, and the faults
    of the newer copies that were skipped.

    Raises ``FileNotFoundError`` when no copy is readable (the faults are in ``err.faults``).
    """
    faults: list[CheckpointError] = []
    for _, p in kept_copies(run_dir):
        try:
            return p, load(p), faults
        except CheckpointError as err:
            faults.append(err)
    err = FileNotFoundError(f"no intact checkpoint_<step>.pt copy in {run_dir}")
    err.faults = faults  # type: ignore[attr-defined]
    raise err
