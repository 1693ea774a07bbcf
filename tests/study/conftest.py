"""Fixtures of the study tests: the CIFAR-10 archive, and a tiny study run once to the end (shared
by the runner and report tests; none of them changes its figures)."""

from __future__ import annotations

from pathlib import Path

import pytest
from study_testkit import study_args, write_study

from simprune.study import run_study


@pytest.fixture(scope="session")
def finished_study(data_root, tmp_path_factory) -> tuple[Path, Path, str]:
    """The tiny study run once to the end (out folder under a runs/ folder)."""
    root = tmp_path_factory.mktemp("study")
    recipe = write_study(root, data_root)
    out = root / "runs" / "tiny"
    code = run_study(study_args("--config", str(recipe), "--out", str(out)))
    assert code == 0
    return recipe, out, str(recipe)
