"""Fixtures of the framework tests: the training tests' tiny runs on real CIFAR-10."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

from train_testkit import DATA, REPO  # noqa: E402


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA / "cifar10-jpg.tar.gz").exists():
        raise FileNotFoundError(f"CIFAR-10 archive not found in {DATA}; set SIMPRUNE_DATA")
    os.environ.setdefault("SIMPRUNE_CACHE", str(REPO / ".cache" / "simprune"))
    return DATA
