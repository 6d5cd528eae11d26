"""Tie a child process's life to its parent's: the embedded worker to `sam3-studio`, the
training child to its worker. Two mechanisms, because each alone has a hole:

- `parent_death_signal(signum)`: a preexec_fn that asks Linux to send `signum` to the child
  when its parent dies (prctl PR_SET_PDEATHSIG). The kernel sends it when the *thread* that
  forked the child exits, not the process, so the forking thread must outlive the child
  (worker_supervisor.py forks and waits in the same thread). A parent that died between fork
  and prctl sends nothing; the preexec_fn sees that (getppid changed) and exits at once.
  Outside Linux it does nothing.
- `watch_parent(parent_pid, on_gone)`: a daemon thread that polls getppid() and calls
  `on_gone` once the process was re-parented (its parent is gone); it works wherever
  getppid does and catches a child whose death signal was handled slowly or not at all.
"""
from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from functools import partial
from typing import Callable

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_S = 1.0


def _libc_prctl() -> Callable | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # no prctl outside Linux
        return None


# Resolved here, in the parent: a forked child of a threaded process should do as little as
# possible before exec (dlopen takes locks another thread may have held at the fork).
_PRCTL = _libc_prctl()


def _set_death_signal(signum: int, parent_pid: int) -> None:
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl: no signal will ever come
        os._exit(1)


def parent_death_signal(signum: int) -> Callable[[], None]:
    """A preexec_fn for Popen: the child gets `signum` when the calling thread's process dies.
    Call it in the thread that calls Popen and that outlives the child."""
    return partial(_set_death_signal, signum, os.getpid())


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def watch_parent(parent_pid: int, on_gone: Callable[[], None] = kill_self,
                 poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """Start a daemon thread that calls `on_gone()` once os.getppid() is no longer `parent_pid`
    (checked every `poll_s` seconds; immediately if it already is not)."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        on_gone()

    watcher = threading.Thread(target=watch, name="parent-watch", daemon=True)
    watcher.start()
    return watcher
