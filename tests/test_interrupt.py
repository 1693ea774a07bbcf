"""SIGTERM inside ``sigterm_interrupts`` raises ``Terminated`` (a KeyboardInterrupt); the previous
handler comes back after the block; exit codes follow the shell's 128 + signal convention."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from simprune.interrupt import Terminated, exit_code, interrupts_deferred, sigterm_interrupts


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


def test_deferred_signal_acts_when_the_block_ends():
    """Inside ``interrupts_deferred`` a SIGTERM waits; it raises ``Terminated`` once the block is done."""
    done = []
    sigint_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in the background
    with pytest.raises(Terminated), sigterm_interrupts():
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            done.append("block finished")
        done.append("not reached")
    assert done == ["block finished"]
    assert signal.getsignal(signal.SIGINT) is sigint_before


def test_deferred_ctrl_c_becomes_keyboard_interrupt_after_the_block():
    done = []
    # Python's own Ctrl-C handler, also when pytest was started in the background (SIGINT ignored)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            with interrupts_deferred():
                signal.raise_signal(signal.SIGINT)
                done.append("block finished")
    finally:
        signal.signal(signal.SIGINT, before)
    assert done == ["block finished"] and not isinstance(info.value, Terminated)


def test_nothing_pending_means_nothing_raised():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with interrupts_deferred():
        pass
    assert {s: signal.getsignal(s) for s in before} == before
