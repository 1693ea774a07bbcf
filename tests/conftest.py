"""Test root. Its presence puts tests/ on sys.path, so shared helpers (reducer_testkit, repo_paths)
import; ``data_root`` is the real CIFAR-10 data every data-path test reads (CI has it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from repo_paths import DATA, REPO


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA / "cifar10-jpg.tar.gz").exists():
        raise FileNotFoundError(f"CIFAR-10 archive not found in {DATA}; set SIMPRUNE_DATA")
    os.environ.setdefault("SIMPRUNE_CACHE", str(REPO / ".cache" / "simprune"))
    return DATA


@pytest.fixture
def one_thread():
    """Run the test on one torch thread, restored afterwards. Folders of tiny models, where thread
    start-up dominates, ask for it in an autouse fixture of their own conftest."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
