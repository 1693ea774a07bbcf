"""Atomic writes: a failure part-way leaves the previous file, whole, and no temporary file."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from simprune import atomic
from simprune.atomic import atomic_write, atomic_write_text
from simprune.interrupt import Terminated, sigterm_interrupts


def test_atomic_write_text_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "results.json"
    atomic_write_text(path, '{"a": 1}')
    atomic_write_text(path, '{"a": 2}')
    assert path.read_text() == '{"a": 2}'
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_atomic_write_text_failure_keeps_old_content(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_text(path, "old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_sigterm_during_a_checkpoint_write_stops_after_it(tmp_path):
    """A SIGTERM that lands while a checkpoint is written waits for the write: the checkpoint is
    whole and loadable, and ``Terminated`` comes after it. (Raised inside ``torch.save``, it was
    replaced by the zip writer's RuntimeError, and a study sitting ended with exit 1 in CI.)"""
    path = tmp_path / "ckpt.pt"
    state = {"w": torch.arange(1000.0)}

    def save_with_signal(f):
        f.write(b"")  # the signal arrives while the file is open
        os.kill(os.getpid(), signal.SIGTERM)
        torch.save(state, f)

    with pytest.raises(Terminated), sigterm_interrupts():
        atomic_write(path, save_with_signal)
    assert torch.equal(torch.load(path)["w"], state["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    """A SIGKILL leaves ``.<target>.<pid>@<host>.<random>.tmp``; the next write (or start) removes
    it once that process is gone, and never the file of a writer still running."""
    import subprocess
    import sys
    import time

    host = os.uname().nodename
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = tmp_path / f".checkpoint.pt.{proc.pid}@{host}.abcd1234.tmp"
    live = tmp_path / f".checkpoint.pt.{os.getppid()}@{host}.efgh5678.tmp"
    old_unnamed = tmp_path / ".cifar10-jpg-0123.npz.x1y2z3w4.tmp"
    new_unnamed = tmp_path / ".cifar10-jpg-0123.npz.a1b2c3d4.tmp"
    for p in (dead, live, old_unnamed, new_unnamed):
        p.write_bytes(b"partial")
    past = time.time() - atomic.STALE_AFTER_S - 60
    os.utime(old_unnamed, (past, past))
    assert atomic.remove_stale_temps(tmp_path, "cifar10-jpg-*.npz") == [old_unnamed]
    atomic_write_text(tmp_path / "checkpoint.pt", "new")  # the same target: its dead temp goes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, new_unnamed.name, "checkpoint.pt"])


def test_no_room_is_an_oserror_naming_the_target(tmp_path):
    """Over ``ulimit -f`` torch.save raises an unrelated RuntimeError ("unexpected pos"); the write
    reports the EFBIG behind it, naming the target, and keeps the old file and no temporary one."""
    import subprocess
    import sys

    code = f"""
import errno, resource, signal, torch
from simprune.checkpoint import atomic_save
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
atomic_save({{"w": torch.ones(10)}}, {str(tmp_path / "ckpt.pt")!r})
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    atomic_save({{"w": torch.ones(100_000)}}, {str(tmp_path / "ckpt.pt")!r})
except OSError as err:
    assert err.errno == errno.EFBIG and err.filename == {str(tmp_path / "ckpt.pt")!r}, err
    print("EFBIG")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "EFBIG", res.stderr
    assert torch.load(tmp_path / "ckpt.pt")["w"].shape == (10,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
