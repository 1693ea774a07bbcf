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
