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
