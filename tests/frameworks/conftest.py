"""Fixtures of the framework tests: the training tests' tiny runs on real CIFAR-10."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))


