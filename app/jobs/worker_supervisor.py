"""`sam3-studio`'s embedded worker, kept alive: started, waited on, and started again with a
back-off when it exits on its own (kill -9, out of memory, a crash).

One thread per supervisor forks the worker and waits on it, which reaps it (no zombie)
and makes the forking thread outlive the worker, as the worker's parent-death signal
needs (parent_death.py). Each start gets a node name of its own, so when a worker exits
on its own the jobs it had claimed can go back to the queue at once (`on_lost(node)`,
sweep.requeue_jobs_of_worker), without waiting for their heartbeat to go stale.

Back-off: the n-th exit in a row waits RESTART_DELAYS_S[n - 1] (the last one after
that) before the next start; an exit after a run of at least STABLE_AFTER_S starts the
count again. After GIVE_UP_AFTER exits in a row the supervisor stops trying, and says so.
`describe()` is the state in words for the UI banner.
"""
from __future__ import annotations

import logging
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

RESTART_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)
STABLE_AFTER_S = 60.0  # a worker that ran this long before it exited was not failing at start
GIVE_UP_AFTER = 8  # exits in a row: about 2 min of quick failures


def new_node_name() -> str:
    """A Celery node name no other worker has had: `studio-<12 hex>@<host>`."""
    return f"studio-{uuid.uuid4().hex[:12]}@{socket.gethostname()}"


def exit_text(code: int) -> str:
    """'exit code 3', or 'killed by SIGKILL' for Popen's negative codes."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _exits(count: int) -> str:
    return f"{count} exit" if count == 1 else f"{count} exits"


@dataclass(frozen=True)
class WorkerState:
    """phase: starting | running | restarting | given_up | stopped."""

    phase: str
    pid: int | None = None
    last_exit: int | None = None
    exits_in_a_row: int = 0
    restart_in_s: float = 0.0


class WorkerSupervisor:
    """Keeps one worker process running: `launch(node_name)` starts it, `stop(process)` ends
    it, `on_lost(node_name)` is told when one exited on its own. `start()`, then `close()`."""

    def __init__(self, launch: Callable[[str], subprocess.Popen], stop: Callable[[subprocess.Popen], object],
                 on_lost: Callable[[str], object], log_path: Path | None = None,
                 restart_delays_s: tuple[float, ...] = RESTART_DELAYS_S, stable_after_s: float = STABLE_AFTER_S,
                 give_up_after: int = GIVE_UP_AFTER):
        self._launch, self._stop, self._on_lost = launch, stop, on_lost
        self.log_path = log_path
        self._delays, self._stable_after_s, self._give_up_after = restart_delays_s, stable_after_s, give_up_after
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # orders a start against close(): no worker starts after close
        self._process: subprocess.Popen | None = None
        self._state = WorkerState("starting")
        self._restart_at = 0.0
        self._thread = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)

    def start(self) -> WorkerSupervisor:
        self._thread.start()
        return self

    @property
    def process(self) -> subprocess.Popen | None:
        """The worker process now running, if any."""
        with self._lock:
            return self._process if self._state.phase == "running" else None

    def state(self) -> WorkerState:
        with self._lock:
            state = self._state
        if state.phase == "restarting":
            return replace(state, restart_in_s=max(0.0, self._restart_at - time.monotonic()))
        return state

    def describe(self) -> str:
        """The state in words: 'Worker: running', 'Worker: killed by SIGKILL; restarting in 3 s ...', ..."""
        state = self.state()
        log = f" Log: `{self.log_path}`." if self.log_path else ""
        if state.phase == "running":
            return "Worker: running."
        if state.phase == "starting":
            return "Worker: starting…"
        if state.phase == "restarting":
            return (f"⚠️ Worker: {exit_text(state.last_exit)}; restarting in {state.restart_in_s:.0f} s "
                    f"({_exits(state.exits_in_a_row)} in a row). Its job resumes from its last checkpoint.{log}")
        if state.phase == "given_up":
            return (f"⛔ Worker: gave up after {_exits(state.exits_in_a_row)} in a row (last: {exit_text(state.last_exit)}); "
                    f"training jobs wait in the queue. Fix the cause and restart sam3-studio.{log}")
        return "Worker: stopped."

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop supervising, then stop the worker (`stop`), and wait for the supervising thread."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None:
            self._stop(process)
        self._thread.join(timeout=timeout_s)

    def _set(self, state: WorkerState, process: subprocess.Popen | None = None) -> None:
        with self._lock:
            self._state, self._process = state, process

    def _supervise(self) -> None:
        exits_in_a_row, last_exit = 0, None
        while True:
            with self._lock:
                if self._stopping.is_set():
                    break
                node = new_node_name()
                started = time.monotonic()
                try:
                    process = self._launch(node)
                except OSError:  # cannot even start it (e.g. the log folder is gone): count it as an exit
                    logger.exception("cannot start the embedded worker")
                    process = None
                self._state, self._process = WorkerState("running", pid=process and process.pid), process
            code = process.wait() if process is not None else 127  # wait() reaps it: no zombie
            if self._stopping.is_set():
                break
            logger.error("embedded worker %s (pid %s) exited on its own: %s", node, process and process.pid,
                         exit_text(code))
            quick = time.monotonic() - started < self._stable_after_s
            exits_in_a_row, last_exit = (exits_in_a_row + 1 if quick else 1), code
            given_up = exits_in_a_row >= self._give_up_after
            delay = self._delays[min(exits_in_a_row, len(self._delays)) - 1]
            self._restart_at = time.monotonic() + delay
            self._set(WorkerState("given_up" if given_up else "restarting", last_exit=code,
                                  exits_in_a_row=exits_in_a_row))
            try:
                self._on_lost(node)
            except Exception:  # the stale-heartbeat sweep still recovers its jobs
                logger.exception("could not re-queue the jobs of worker %s", node)
            if given_up:
                logger.error("embedded worker: gave up after %d exits in a row", exits_in_a_row)
                return
            if self._stopping.wait(max(0.0, self._restart_at - time.monotonic())):
                break
        self._set(WorkerState("stopped", last_exit=last_exit, exits_in_a_row=exits_in_a_row))
