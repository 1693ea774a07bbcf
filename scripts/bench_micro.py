"""Time ratio of pruned over dense training computations next to their FLOPs ratio.

Run: ``python scripts/bench_micro.py`` (same options as ``python -m simprune.bench.micro``; about
two minutes on two idle CPU cores).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    try:
        from simprune.bench.micro import main
    except ModuleNotFoundError:  # run from a checkout without installing
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from simprune.bench.micro import main
    raise SystemExit(main())
