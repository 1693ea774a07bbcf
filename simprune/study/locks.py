"""One sitting per cell: ``<cell>/study.lock``.

Several sittings of a study may run at once on one machine (one per CPU core or GPU, e.g. with
``OMP_NUM_THREADS=1`` or ``CUDA_VISIBLE_DEVICES``): a sitting takes a cell by creating
``<cell>/study.lock`` and skips cells another live sitting holds. A lock left by a killed sitting
(its process is gone) is taken over. Locks are per machine: under ``torchrun`` the whole job is
one sitting and takes no locks.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

LOCK_NAME = "study.lock"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def take_lock(folder: Path) -> dict[str, Any] | None:
    """Create ``folder/study.lock`` for this process. Returns ``None`` when taken, else the
    holder's record (``pid``, ``host``, ``started``). A lock of a dead process on this host is
    replaced; one from another host is respected (the user removes it if that sitting is gone)."""
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):  # being written this instant, or garbage
                holder = {}
            stale = (holder.get("host") == me["host"] and isinstance(holder.get("pid"), int)
                     and not pid_alive(holder["pid"]))
            if not stale:
                return holder or {"pid": "?", "host": "?", "started": "?"}
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return None
    return {"pid": "?", "host": "?", "started": "?"}


def release_lock(folder: Path) -> None:
    path = folder / LOCK_NAME
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


__all__ = ["LOCK_NAME", "pid_alive", "release_lock", "take_lock"]
