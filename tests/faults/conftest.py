"""Fixtures of the fault-injection suite: one tiny uninterrupted run (the reference every resumed
run is compared with, step by step), and copies of it as a run stopped part-way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from faultkit import TOTAL_STEPS, run, step_losses, train_argv


@pytest.fixture(scope="session")
def reference(data_root, tmp_path_factory) -> tuple[Path, dict[int, float]]:
    """The fault run, uninterrupted: its folder (read only by the tests) and per-step losses."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    res = run(train_argv(out), data_root)
    assert res.returncode == 0, res.stderr
    losses = step_losses(out)
    assert sorted(losses) == list(range(1, TOTAL_STEPS + 1))
    return out, losses


def stopped_copy(reference: Path, dest: Path, step: int, logged: int | None = None) -> Path:
    """``dest``: the reference run as a run killed after ``logged`` steps (default ``step``) whose
    newest checkpoint is at ``step``: ``checkpoint.pt`` and the kept copies up to ``step``,
    ``metrics.jsonl`` up to ``logged``, no ``results.json``."""
    logged = step if logged is None else logged
    dest.mkdir(parents=True)
    shutil.copy2(reference / "config.json", dest / "config.json")
    for p in reference.glob("checkpoint_*.pt"):
        if int(p.stem.split("_")[1]) <= step:
            shutil.copy2(p, dest / p.name)
    shutil.copy2(reference / f"checkpoint_{step:07d}.pt", dest / "checkpoint.pt")
    lines = [ln for ln in (reference / "metrics.jsonl").read_text().splitlines()
             if json.loads(ln)["step"] <= logged]
    (dest / "metrics.jsonl").write_text("".join(ln + "\n" for ln in lines))
    return dest


@pytest.fixture
def stopped(reference, tmp_path):
    """A function ``(step, logged=None) -> folder`` making a stopped copy of the reference run."""
    return lambda step, logged=None: stopped_copy(reference[0], tmp_path / "run", step, logged)
