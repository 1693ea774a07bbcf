"""Cell locks: another host's lock is respected; this process's is released."""

from __future__ import annotations

import json
import os

from simprune.study import locks


def test_take_lock_respects_another_host(tmp_path):
    held = {"pid": 1, "host": "elsewhere.example", "started": "t0"}
    (tmp_path / "study.lock").write_text(json.dumps(held))
    assert locks.take_lock(tmp_path) == held
    (tmp_path / "study.lock").unlink()
    assert locks.take_lock(tmp_path) is None
    assert json.loads((tmp_path / "study.lock").read_text())["pid"] == os.getpid()
    locks.release_lock(tmp_path)
    assert not (tmp_path / "study.lock").exists()


def test_busy_with_names_a_live_holder_only(tmp_path):
    import socket
    import subprocess
    import sys

    assert locks.busy_with(tmp_path) is None  # no lock
    host = socket.gethostname()
    lock = tmp_path / "study.lock"
    lock.write_text(json.dumps({"pid": os.getppid(), "host": host, "started": "t0", "command": "c"}))
    assert locks.busy_with(tmp_path) == f"pid {os.getppid()} on host {host} since t0 (c)"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": host, "started": "t0"}))
    assert locks.busy_with(tmp_path) is None  # its process is gone: stale
    lock.write_text("{not json")
    assert locks.busy_with(tmp_path) is None
    assert lock.exists()  # reading never removes a lock
