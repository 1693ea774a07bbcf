"""Atomic file writes: a temporary file in the target's folder, fsync, then ``os.replace``.

A crash or a kill at any moment leaves either the old file or the new one, whole; never a
truncated file that a later run would misread, and no temporary file on success or on error.
Ctrl-C and SIGTERM wait until the write is done (:func:`simprune.interrupt.interrupts_deferred`).
Used for checkpoints, ``results.json``, study logs and the decoded-dataset cache.

Only SIGKILL (or a power cut) can leave a temporary file behind. Its name,
``.<target>.<pid>@<host>.<random>.tmp``, says which process wrote it, so
:func:`remove_stale_temps` removes it on a later start once that process is gone, and never the
file of a writer that is still running (two processes filling the same data cache, say).

A write that fails for lack of room (``ENOSPC``, ``EFBIG`` under ``ulimit -f``, ``EDQUOT``) raises
``OSError`` with that errno and the target's name, even where ``torch.save`` would have turned it
into an unrelated ``RuntimeError``; the old file is kept whole.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from simprune.interrupt import interrupts_deferred

#: errno values that mean "no room to write": a full disk, a file-size limit, a full quota
NO_ROOM = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})
#: a temporary file whose name does not say which process wrote it (written before names did, or
#: on another host) counts as stale once it has not changed for this long
STALE_AFTER_S = 24 * 3600.0


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


class _Recorder:
    """A file wrapper that remembers the first ``OSError`` its ``write`` raised.

    ``torch.save``'s zip writer swallows the error of a failed write and raises its own
    (``unexpected pos ...``); the recorded error is the one worth reporting.
    """

    def __init__(self, f: IO[Any]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _named(err: OSError, path: Path) -> OSError:
    """``err`` with the target's name (not the temporary file's, or none)."""
    return OSError(err.errno, err.strerror or str(err), str(path))


def atomic_write(path: str | Path, write: Callable[[IO[Any]], object], binary: bool = True,
                 mode: int = 0o644) -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, then atomically rename it to ``path``.

    Args:
        path: destination; its folder is created if missing.
        write: fills the open file (``torch.save(obj, f)``, ``np.savez(f, ...)``, ``f.write(text)``).
        binary: open the temporary file in binary (``"wb"``) or text (``"w"``) mode.
        mode: permission bits of the result (``mkstemp`` alone would make it owner-only).

    Raises:
        OSError: the write failed (full disk, file-size limit, permissions); ``filename`` is
            ``path``. The previous file at ``path``, if any, is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, glob.escape(path.name))
    with interrupts_deferred():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{_host()}.", suffix=".tmp",
                                   dir=path.parent)
        rec = None
        try:
            with os.fdopen(fd, "wb" if binary else "w") as f:
                rec = _Recorder(f)
                write(rec)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            cause = rec.error if rec is not None and rec.error is not None else err
            if isinstance(cause, OSError) and cause.errno is not None:
                raise _named(cause, path) from err
            raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small text file (``results.json``, a study log) atomically."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or we cannot tell: keep its file)
    return True


#: ``.<target>.<pid>@<host>.<random>.tmp``
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)@(?P<host>[^@]+)\.[^.@]+\.tmp")


def _writer(name: str) -> tuple[int, str] | None:
    """``(pid, host)`` from a temporary file's name, or ``None`` when it does not say."""
    m = _TEMP_NAME.fullmatch(name)
    return (int(m.group("pid")), m.group("host")) if m else None


def remove_stale_temps(folder: str | Path, name: str = "*") -> list[Path]:
    """Remove the temporary files that killed writers left in ``folder`` for targets matching the
    glob ``name`` (``checkpoint.pt``, ``cifar10-jpg-*.npz``, ``*``); returns what was removed.

    A file is stale when the process its name records is gone on this host, or, when its name
    does not say (or says another host), when it has not changed for :data:`STALE_AFTER_S`.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.glob(f".{name}.*.tmp"):
        writer = _writer(p.name)
        try:
            if writer is not None and writer[1] == _host():
                stale = writer[0] != os.getpid() and not _alive(writer[0])
            else:
                stale = now - p.stat().st_mtime > STALE_AFTER_S
            if stale:
                p.unlink()
                removed.append(p)
        except OSError:
            continue  # gone meanwhile, or not ours to remove
    return removed
