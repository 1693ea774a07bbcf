"""One sitting per cell: ``<cell>/study.lock``.

Several sittings of a study may run at once on one machine (one per CPU core or GPU, e.g. with
``OMP_NUM_THREADS=1`` or ``CUDA_VISIBLE_DEVICES``): a sitting takes a cell by creating
``<cell>/study.lock`` and skips cells another live sitting holds. A lock left by a killed sitting
(its process is gone) is taken over. Locks are per machine: under ``torchrun`` the whole job is
one sitting and takes no locks. The mechanism is the run folder's lock
(:mod:`simprune.train.folder_lock`); the run a sitting trains in the cell also holds ``run.lock``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simprune.train.folder_lock import describe, live_holder, pid_alive
from simprune.train.folder_lock import release_lock as _release
from simprune.train.folder_lock import take_lock as _take

LOCK_NAME = "study.lock"


def take_lock(folder: Path) -> dict[str, Any] | None:
    """Create ``folder/study.lock`` for this process. Returns ``None`` when taken, else the
    holder's record (``pid``, ``host``, ``started``, ``command``). A lock of a dead process on
    this host is replaced; one from another host is respected (the user removes it if that
    sitting is gone)."""
    return _take(folder, LOCK_NAME)


def release_lock(folder: Path) -> None:
    _release(folder, LOCK_NAME)


def busy_with(folder: Path) -> str | None:
    """``pid 123 on host h since ...`` for the live sitting training the cell now, else ``None``."""
    holder = live_holder(folder, LOCK_NAME)
    return None if holder is None else describe(holder)


__all__ = ["LOCK_NAME", "busy_with", "pid_alive", "release_lock", "take_lock"]
