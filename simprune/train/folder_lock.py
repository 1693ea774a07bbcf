"""Who holds a folder: a lock file in it that names the holder (host, pid, start time, command).

Two locks use it. A run holds its ``--out`` folder with ``run.lock`` while it trains: a second run
with the same ``--out`` (same seed or not) fails at once with one line naming the holder, instead
of both writing ``metrics.jsonl`` and ``checkpoint.pt`` (:func:`holding_run_folder`). A study
sitting holds a cell with ``study.lock`` (:mod:`simprune.study.locks`).

A killed holder does not leave the folder stuck: a lock whose process is gone from this host
(its pid is not alive, or is alive but started at another time: a reused pid) is stale and is
taken over. A lock from another host is respected; the message says which file to remove once
that machine's run is known to be gone. Under ``torchrun`` only rank 0 takes the run lock (the
other processes write nothing in the folder).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RUN_LOCK = "run.lock"
#: what an unreadable or half-written lock file reports
UNKNOWN: dict[str, Any] = {"pid": "?", "host": "?", "started": "?"}


class FolderBusyError(RuntimeError):
    """The folder is held by another live process; the message names it."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``), or ``None`` where
    that cannot be read (not Linux, or gone): tells a holder from a later process with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the name in (...) may hold spaces
    return fields[19] if len(fields) > 19 else None


def my_record(command: str | None = None) -> dict[str, Any]:
    """This process as a lock holder."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "proc_start": process_start(pid),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command if command is not None else shlex.join(_command_line())}


def _command_line() -> list[str]:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("simprune", "cli.py", "__main__.py"):
        argv[0] = "simprune"
    return argv


def is_stale(holder: dict[str, Any]) -> bool:
    """A lock of this host whose process is gone (or whose pid now belongs to another process)."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    if not pid_alive(pid):
        return True
    then, now = holder.get("proc_start"), process_start(pid)
    return then is not None and now is not None and then != now


def describe(holder: dict[str, Any]) -> str:
    """``pid 123 on host h since 2026-12-07T13:00:00+00:00 (simprune train --out runs/x)``."""
    text = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since "
            f"{holder.get('started', '?')}")
    return text + (f" ({holder['command']})" if holder.get("command") else "")


def read_holder(path: Path) -> dict[str, Any]:
    """The record in lock file ``path``; ``{}`` when there is none, or it is being written this
    instant, or it is not a record."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def take_lock(folder: Path, name: str, command: str | None = None) -> dict[str, Any] | None:
    """Create ``folder/name`` for this process. Returns ``None`` when taken (also when this
    process already holds it), else the holder's record. A stale lock is replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    me = my_record(command)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_holder(path)
            if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                return None  # ours (a study sitting's cell lock taken again)
            if not is_stale(holder):
                return holder or dict(UNKNOWN)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return None
    return dict(UNKNOWN)


def live_holder(folder: Path, name: str) -> dict[str, Any] | None:
    """The record of the live process holding ``folder/name`` (read only), or ``None``: no lock,
    a stale one, or one being written this instant."""
    holder = read_holder(folder / name)
    return holder if holder and not is_stale(holder) else None


def release_lock(folder: Path, name: str) -> None:
    """Remove ``folder/name`` if this process holds it."""
    path = folder / name
    held = read_holder(path)
    if held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
        with suppress(OSError):
            path.unlink()


def _is_main() -> bool:
    """Rank 0 of a ``torchrun`` job (read from the environment: the process group may not exist
    yet), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def holding_run_folder(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir`` (``run.lock``) for the duration; :class:`FolderBusyError` at once when a
    live run holds it. A folder this call created is removed again if the run left nothing in it.

    Where the lock cannot be written (the path is a file, the folder is read-only) nothing is
    held: the run's own checks report that, with their message.
    """
    run_dir = Path(run_dir)
    if not _is_main():
        yield
        return
    created = not run_dir.exists()
    try:
        holder = take_lock(run_dir, RUN_LOCK)
    except OSError:
        yield  # not writable: the run's check of its out folder says so
        return
    if holder is not None:
        hint = (" If that run is gone (it ran on another machine), remove "
                f"{run_dir / RUN_LOCK}." if holder.get("host") != socket.gethostname() else "")
        raise FolderBusyError(
            f"the out folder {run_dir} is in use by another run: {describe(holder)}. Wait for it "
            f"to end, or pass another --out; nothing was changed.{hint}")
    try:
        yield
    finally:
        release_lock(run_dir, RUN_LOCK)
        if created:
            try:
                run_dir.rmdir()  # only if empty: the run failed before writing anything
            except OSError:
                pass


__all__ = ["FolderBusyError", "RUN_LOCK", "describe", "holding_run_folder", "is_stale", "live_holder",
           "pid_alive", "process_start", "release_lock", "take_lock"]
