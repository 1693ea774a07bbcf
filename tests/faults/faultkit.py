"""The fault-injection suite's helpers, shared with ``scripts/kill_resume.py``: one tiny real run
(:data:`FAULT_RUN`) started as a subprocess, killed, damaged or starved, then resumed.

Kills come from outside (``SIGKILL`` once ``metrics.jsonl`` shows a step) or, for a kill in the
middle of a checkpoint write, from ``inject.py``, which starts the same command with
``torch.save`` wrapped to write part of the n-th checkpoint and then SIGKILL its own process.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE.parent / "train"):  # tests/ (repo_paths), tests/train (train_testkit)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from train_testkit import PY, REPO, TINY, cli_args, run_env  # noqa: E402

#: DINO + SimPrune with 2 local views (pair reducer, multi-crop, EMA teacher, centering): 12 steps
#: of batch 16, a checkpoint and a kept copy every 3 steps, deterministic, no final evaluation
FAULT_RUN: dict[str, object] = dict(
    TINY, framework="dino", method="simprune", local_views=2, epochs=0.75, deterministic=True,
    eval_at_end=False, ckpt_every=3, keep_every=3, drop_path=0.1)
TOTAL_STEPS = 12
INJECT = HERE / "inject.py"


def train_argv(out: Path | str, **over: object) -> list[str]:
    """``simprune train`` arguments of the fault run in ``out`` (``over``: other keys)."""
    return ["train", *cli_args(**{**FAULT_RUN, **over, "out": out})]


def command(argv: list[str], kill_in_save: int = 0, fraction: float = 0.5) -> list[str]:
    """The subprocess command for ``simprune <argv>``; with ``kill_in_save``, killed by SIGKILL
    after writing ``fraction`` of its ``kill_in_save``-th checkpoint."""
    if kill_in_save:
        return [PY, str(INJECT), "--kill-in-save", str(kill_in_save), "--fraction", str(fraction),
                "--", *argv]
    return [PY, "-m", "simprune.cli", *argv]


def file_size_limit(nbytes: int):
    """A ``preexec_fn`` that sets ``ulimit -f`` (RLIMIT_FSIZE) of the child to ``nbytes``."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return limit


def run(argv: list[str], data_root: Path, kill_in_save: int = 0, fraction: float = 0.5,
        max_file_bytes: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``simprune <argv>`` to its end; stdout/stderr as text."""
    return subprocess.run(command(argv, kill_in_save, fraction), env=run_env(data_root), text=True,
                          capture_output=True, timeout=timeout, cwd=REPO,
                          preexec_fn=file_size_limit(max_file_bytes) if max_file_bytes else None)


def step_losses(run_dir: Path) -> dict[int, float]:
    """``{step: loss}`` of every logged training step (the file as it is: a torn line is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    out: dict[int, float] = {}
    if not path.exists():
        return out
    for ln in path.read_text().splitlines():
        try:
            rec = json.loads(ln)
        except ValueError:
            continue
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def _wait_for_steps(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float) -> int:
    """Poll ``metrics.jsonl`` until it shows ``step`` (or more) logged steps, the process ends or
    ``timeout`` seconds pass; returns the steps logged then."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if len(step_losses(run_dir)) >= step:
            break
        time.sleep(0.01)
    return len(step_losses(run_dir))


def kill_at_step(argv: list[str], data_root: Path, run_dir: Path, step: int,
                 timeout: float = 300) -> int:
    """Start ``simprune <argv>``, SIGKILL it once ``metrics.jsonl`` shows ``step`` (or more) logged
    steps; returns the steps logged when it died. Fails if the run ended first."""
    proc = subprocess.Popen(command(argv), env=run_env(data_root), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_steps(proc, run_dir, step, timeout)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    if proc.returncode != -signal.SIGKILL:
        raise AssertionError(f"the run ended by itself (exit {proc.returncode}) before it was killed")
    return len(step_losses(run_dir))


def signal_at_step(argv: list[str], data_root: Path, run_dir: Path, step: int, signum: int,
                   timeout: float = 300) -> tuple[int, subprocess.CompletedProcess]:
    """Start ``simprune <argv>``, send ``signum`` once ``metrics.jsonl`` shows ``step`` logged steps
    and let it stop by itself; returns the steps logged then and the ended process (its exit
    status, stdout and stderr)."""
    # a child of a shell's background job inherits SIGINT ignored, and Python then installs no
    # Ctrl-C handler: give it the default disposition, as a terminal's foreground job has
    proc = subprocess.Popen(command(argv), env=run_env(data_root), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        sent = _wait_for_steps(proc, run_dir, step, timeout)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return sent, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def temp_files(folder: Path) -> list[str]:
    """Temporary files of atomic writes (``.<name>.*.tmp``) in ``folder``."""
    return sorted(p.name for p in Path(folder).glob(".*.tmp"))


def dead_pid() -> int:
    """The pid of a process that has just ended (for a stale temporary file's name)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
