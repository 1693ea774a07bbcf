"""Shared fixtures: the tiny models here are dominated by thread start-up cost, so run them on one
thread (restored afterwards, so other test folders keep their own setting)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
