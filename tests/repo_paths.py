"""Where the tests find the repository and the real data (``$SIMPRUNE_DATA``, else ``../shared/data``)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SIMPRUNE_DATA") or REPO.parent / "shared" / "data")
