"""Failed cells of a study sitting: what each one's error was and whether running the same
command again can help.

A run that stops on a NaN or inf (:class:`~simprune.train.loop.NonFiniteError`) resumes from its
last good checkpoint and, with the same settings, meets the same fault: rerunning will not help
until the cell's settings change. Any other failure of a training run is retried by the next
sitting. (An interruption, Ctrl-C or SIGTERM, is no failure: the sitting stops with exit 130/143
and the same command resumes.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simprune.study.results import ERROR_NAME

#: the exit status of a sitting in which a cell failed (a user error is 2, an interruption 130/143)
FAILED_EXIT = 1


def error_record(err: BaseException, step: int, head: str, deterministic: bool) -> dict[str, Any]:
    """What ``<cell>/study_error.json`` holds for a failed run."""
    return {"error": str(err), "step": step, "cell": head, "deterministic": deterministic}


def read_error(folder: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads((folder / ERROR_NAME).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def failure_line(rec: dict[str, Any], folder: Path) -> str:
    """One line for a failed run: the cell, the step, its error and what to do."""
    head = rec.get("cell") or str(folder)
    error = str(rec.get("error", "?")).rstrip()
    what = f"{head} failed at step {rec.get('step', '?')}: {error}" + ("" if error.endswith(".") else ".")
    if rec.get("deterministic", True):
        return (f"{what} Rerunning will not help: with the same settings the run resumes from its "
                "last good checkpoint and fails the same way; change the cell's settings (e.g. "
                "--set lr=...) or leave it out of the study.")
    return f"{what} The next sitting tries it again."


def failed_runs(folders: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """``(folder, record)`` of the runs among ``folders`` whose last training failed."""
    out = []
    for folder in folders:
        rec = read_error(folder)
        if rec is not None:
            out.append((folder, rec))
    return out


__all__ = ["FAILED_EXIT", "error_record", "failed_runs", "failure_line", "read_error"]
