"""SIGTERM stops a command the way Ctrl-C does.

Schedulers (SLURM, Kubernetes), ``kill`` and ``torchrun`` stop a process with SIGTERM, whose default
action ends it on the spot: no ``finally`` block runs, so a study sitting would go unlogged and the
user would see no message. :func:`sigterm_interrupts` turns SIGTERM into :class:`Terminated`, a
``KeyboardInterrupt``, so the same clean-up paths run for both signals. Nothing is saved on the way
out: a training run resumes from its last checkpoint, which is written atomically.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""

    signum = signal.SIGTERM


def exit_code(err: KeyboardInterrupt) -> int:
    """The shell's convention, 128 + signal number: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + int(getattr(err, "signum", signal.SIGINT))


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"received signal {signum}")


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`; the previous handler comes back after.

    Only the main thread may set signal handlers; elsewhere (e.g. a command called from a worker
    thread) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["Terminated", "exit_code", "sigterm_interrupts"]
