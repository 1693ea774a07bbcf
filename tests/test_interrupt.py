"""SIGTERM inside ``sigterm_interrupts`` raises ``Terminated`` (a KeyboardInterrupt); the previous
handler comes back after the block; exit codes follow the shell's 128 + signal convention."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from simprune.interrupt import Terminated, exit_code, sigterm_interrupts


def test_sigterm_raises_terminated_and_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as info, sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at once and ends the sleep
    assert isinstance(info.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) is before


def test_exit_codes():
    assert exit_code(KeyboardInterrupt()) == 130
    assert exit_code(Terminated()) == 143


def test_no_handler_outside_the_main_thread():
    seen = []

    def worker():
        with sigterm_interrupts():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [before]
