"""Fixtures of the training tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from train_testkit import DATA, REPO


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA / "cifar10-jpg.tar.gz").exists():
        raise FileNotFoundError(f"CIFAR-10 archive not found in {DATA}; set SIMPRUNE_DATA")
    os.environ.setdefault("SIMPRUNE_CACHE", str(REPO / ".cache" / "simprune"))
    return DATA
