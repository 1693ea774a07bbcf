"""The run folder's lock: a live holder is named, a dead one (or a reused pid) is taken over,
another host's is respected with the file to remove, a folder the lock created is removed again
when the run left nothing in it, and under torchrun only rank 0 holds it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from simprune.train.folder_lock import (
    RUN_LOCK,
    FolderBusyError,
    holding_run_folder,
    is_stale,
    process_start,
    take_lock,
)


def write_lock(folder, **record):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_LOCK).write_text(json.dumps(record))


def test_a_live_holder_is_named(tmp_path):
    parent = os.getppid()
    write_lock(tmp_path, pid=parent, host=socket.gethostname(), started="t0",
               proc_start=process_start(parent), command="simprune train --out x")
    with pytest.raises(FolderBusyError, match=rf"in use by another run: pid {parent} on host "
                       rf"{socket.gethostname()} since t0 \(simprune train --out x\)\. Wait"):
        with holding_run_folder(tmp_path):
            pass
    assert json.loads((tmp_path / RUN_LOCK).read_text())["pid"] == parent  # left alone


def test_a_dead_or_reused_pid_is_stale(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host = socket.gethostname()
    assert is_stale({"pid": int(dead.stdout), "host": host})
    parent = os.getppid()
    assert not is_stale({"pid": parent, "host": host, "proc_start": process_start(parent)})
    if process_start(parent) is not None:  # the pid now belongs to a process started later
        assert is_stale({"pid": parent, "host": host, "proc_start": "1"})
    assert not is_stale({"pid": int(dead.stdout), "host": "elsewhere.example"})
    write_lock(tmp_path, pid=int(dead.stdout), host=host, started="t0")
    with holding_run_folder(tmp_path):
        assert json.loads((tmp_path / RUN_LOCK).read_text())["pid"] == os.getpid()
    assert not (tmp_path / RUN_LOCK).exists()


def test_another_hosts_lock_says_which_file_to_remove(tmp_path):
    write_lock(tmp_path, pid=1, host="elsewhere.example", started="t0")
    with pytest.raises(FolderBusyError, match=f"remove {tmp_path / RUN_LOCK}"):
        with holding_run_folder(tmp_path):
            pass


def test_a_folder_the_lock_made_is_removed_when_left_empty(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(ValueError):
        with holding_run_folder(out):
            assert (out / RUN_LOCK).exists()
            raise ValueError("bad config")
    assert not out.exists()
    with holding_run_folder(out):
        (out / "config.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_only_rank_0_holds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with holding_run_folder(tmp_path / "r"):
        assert not (tmp_path / "r").exists()
    monkeypatch.setenv("RANK", "0")
    assert take_lock(tmp_path, RUN_LOCK) is None
    assert take_lock(tmp_path, RUN_LOCK) is None  # this process holds it already
