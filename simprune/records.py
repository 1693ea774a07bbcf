"""Reading a run's ``metrics.jsonl``: one JSON record per logged step (written by
:class:`simprune.train.log.MetricsLog`). A leaf module, so that the plots of ``simprune viz`` and the
study can read the records of a run without importing the trainer."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def read_records(path: Path, repair: bool = False) -> list[tuple[dict[str, Any], str]]:
    """``(record, line)`` for every line of a ``metrics.jsonl``.

    A last line that does not read as JSON (torn when the run was killed mid-append) is dropped;
    with ``repair`` one line on stderr says so. Any other such line raises ``ValueError`` naming
    the file and the line.
    """
    lines = path.read_text(errors="replace").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    out: list[tuple[dict[str, Any], str]] = []
    for i, ln in enumerate(lines, start=1):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
            if not isinstance(rec, dict):
                raise ValueError(f"a JSON {type(rec).__name__}, not an object")
        except ValueError as err:
            if i == len(lines):
                if repair:
                    print(f"simprune: note: {path}: dropped a torn last line (line {i}, {len(ln)} "
                          "characters cut off when the run was stopped)", file=sys.stderr, flush=True)
                continue
            raise ValueError(f"{path} line {i} is not a JSON record ({err}); fix or delete that "
                             "line, then run the same command again") from err
        out.append((rec, ln))
    return out


__all__ = ["read_records"]
