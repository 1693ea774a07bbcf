"""SIGTERM stops a command the way Ctrl-C does.

Schedulers (SLURM, Kubernetes), ``kill`` and ``torchrun`` stop a process with SIGTERM, whose default
action ends it on the spot: no ``finally`` block runs, so a study sitting would go unlogged and the
user would see no message. :func:`sigterm_interrupts` turns SIGTERM into :class:`Terminated`, a
``KeyboardInterrupt``, so the same clean-up paths run for both signals. The trainer holds both
signals back while a step runs (:func:`interrupts_deferred`) and, single-process, writes a
checkpoint at the step reached on the way out; a run killed outright resumes from its last
checkpoint, which is written atomically.
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


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM are held back; the first one is re-raised when it ends.

    For short writes that must finish once started. An exception raised inside ``torch.save``
    is replaced by the error its zip writer raises on the way out, so a Ctrl-C or SIGTERM that
    lands mid-checkpoint would end the command with a ``RuntimeError`` instead of the clean stop
    (exit 130/143, message, study log) the handlers give. The signal is re-sent to the process
    after the previous handlers are back, so it acts exactly as it would have: an exception, the
    default action, or nothing if it was ignored. Does nothing outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if pending:
            signal.raise_signal(pending[0])


__all__ = ["Terminated", "exit_code", "interrupts_deferred", "sigterm_interrupts"]
