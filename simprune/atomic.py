"""Atomic file writes: a temporary file in the target's folder, fsync, then ``os.replace``.

A crash or a kill at any moment leaves either the old file or the new one, whole; never a
truncated file that a later run would misread, and no temporary file on success or on error.
Ctrl-C and SIGTERM wait until the write is done (:func:`simprune.interrupt.interrupts_deferred`).
Used for checkpoints, ``results.json``, study logs and the decoded-dataset cache.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from simprune.interrupt import interrupts_deferred


def atomic_write(path: str | Path, write: Callable[[IO[Any]], object], binary: bool = True,
                 mode: int = 0o644) -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, then atomically rename it to ``path``.

    Args:
        path: destination; its folder is created if missing.
        write: fills the open file (``torch.save(obj, f)``, ``np.savez(f, ...)``, ``f.write(text)``).
        binary: open the temporary file in binary (``"wb"``) or text (``"w"``) mode.
        mode: permission bits of the result (``mkstemp`` alone would make it owner-only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with interrupts_deferred():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb" if binary else "w") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small text file (``results.json``, a study log) atomically."""
    atomic_write(path, lambda f: f.write(text), binary=False)
