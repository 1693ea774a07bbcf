"""The tiny models here are dominated by thread start-up cost: every test runs on one thread
(``one_thread`` in tests/conftest.py, restored afterwards, so other folders keep their setting)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield
