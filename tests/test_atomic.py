"""Atomic writes: a failure part-way leaves the previous file, whole, and no temporary file."""

from __future__ import annotations

import pytest

from simprune import atomic
from simprune.atomic import atomic_write_text


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
