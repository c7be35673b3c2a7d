"""Processes that never outlive their owner (Linux PR_SET_PDEATHSIG).

`rcbatch run` starts Redis, the simulator and workers; a test starts workers. If the owner is
SIGKILLed, its children must not linger: each is told at birth to die with its parent. Celery
pool children are told the same about their worker's main process (worker/tasks.py), so a
SIGKILLed worker leaves no orphaned pool behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int]:
    """libc's prctl(2)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl: Callable[..., int] = libc.prctl
    return prctl


def die_with_parent() -> Callable[[], None] | None:
    """A Popen preexec_fn: the child gets SIGTERM when the thread that spawned it ends.

    Linux only (None elsewhere). Call Popen from the main thread or a long-lived one.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = _prctl()  # looked up here: the forked child must not load libraries
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        # the parent may have died between fork and prctl; then no signal would ever come
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def exit_with_parent(sig: signal.Signals = signal.SIGKILL) -> None:
    """Make the calling process receive `sig` when its parent dies (called in the child)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    _prctl()(_PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent:
        os._exit(1)
