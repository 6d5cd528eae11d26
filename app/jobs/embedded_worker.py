"""The embedded worker: a Celery worker as a child process of `sam3-studio`, and what the
studio runs beside the web app (`start_background_services`).

- Embedded mode (no REDIS_URL), or `with_worker=True`: one worker child process with the
  studio's DATA_DIR, DATABASE_URL, REDIS_URL and SAM3_MODEL. The tests run real workers
  the same way (style.md 10).
- Always: the sweep thread (sweep.start_sweeper) every SWEEP_INTERVAL_S.

The worker is launched by name, `celery -A worker.celery_app` (queue.WORKER_APP): the app
never imports the worker's code (architecture.md, import direction).

The worker is `--pool=solo --concurrency=1 --prefetch-multiplier=1`: the task runs in
the worker process itself, one at a time, and the parent never touches CUDA
(reliability.md: CUDA cannot be initialised in a forked child). Gossip and mingle are
off: workers share nothing but the queue.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from sqlalchemy import Engine

from app.jobs.queue import TRAIN_QUEUE, WORKER_APP, make_celery, send_train
from app.jobs.sweep import SWEEP_INTERVAL_S, start_sweeper
from app.settings import Settings

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _set_parent_death_signal(signum: int) -> None:
    """Ask the kernel to send `signum` to this process when its parent dies (Linux only;
    elsewhere the stale-heartbeat sweep still recovers orphaned jobs)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def kill_with_parent() -> None:
    """preexec_fn for a training child: SIGKILL when the worker that started it dies."""
    _set_parent_death_signal(signal.SIGKILL)


def stop_with_parent() -> None:
    """preexec_fn for a worker: SIGTERM (Celery's warm shutdown) when the studio that started it dies."""
    _set_parent_death_signal(signal.SIGTERM)


def worker_command(queues: str = TRAIN_QUEUE, node_name: str | None = None) -> list[str]:
    """The argv of one solo worker consuming `queues` (comma-separated)."""
    node_name = node_name or f"train-{uuid.uuid4().hex[:8]}@%h"
    return [
        sys.executable, "-m", "celery", "-A", WORKER_APP, "worker",
        "-Q", queues, "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1",
        "--without-gossip", "--without-mingle", "--loglevel=INFO", "-n", node_name,
    ]


def start_worker(env: dict[str, str], data_dir: str | Path, queues: str = TRAIN_QUEUE,
                 log_path: str | Path | None = None) -> subprocess.Popen:
    """Launch a worker with this process's environment updated by `env` and DATA_DIR=data_dir.

    Keys in `env` override the inherited ones (pass REDIS_URL="" for the embedded broker).
    Output is appended to `log_path` (default DATA_DIR/logs/worker.log). The worker gets
    its own process group, so `stop_worker` also reaches any children it starts, and is
    told to stop when this process dies (no orphan worker after the studio is killed).
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)  # the embedded broker file and the DB live here
    log_path = Path(log_path) if log_path else data_dir / "logs" / "worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **env, "DATA_DIR": str(data_dir)}
    with open(log_path, "ab") as log_file:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(worker_command(queues), env=child_env, stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=stop_with_parent)


def stop_worker(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM to the worker's process group, then SIGKILL after `timeout` seconds; returns
    the worker's exit code. The training child stops at once and its task puts the job back
    in the queue (worker/tasks.py run_child), so it resumes from its checkpoint when the
    studio or another worker sends it again; a job cut off by the SIGKILL stops beating and
    the stale-heartbeat sweep does the same.
    """
    if proc.poll() is not None:
        return proc.returncode
    _signal_group(proc, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        return proc.wait(timeout=10)


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)  # start_new_session made the worker its group's leader
    except ProcessLookupError:
        pass


@dataclass
class BackgroundServices:
    """Handle of the running services; `stop()` ends the sweep thread, then the worker."""

    worker: subprocess.Popen | None
    sweeper: threading.Thread
    stopping: threading.Event = field(default_factory=threading.Event)

    def stop(self, worker_timeout_s: float = 30.0) -> None:
        self.stopping.set()
        self.sweeper.join(timeout=worker_timeout_s)
        if self.worker is not None:
            stop_worker(self.worker, timeout=worker_timeout_s)


def start_background_services(settings: Settings, engine: Engine, with_worker: bool = False,
                              interval_s: float = SWEEP_INTERVAL_S) -> BackgroundServices:
    """Start a worker process when `with_worker` (the embedded broker's default) and the sweep thread
    (stale after settings.JOB_STALE_AFTER_S)."""
    worker = None
    if with_worker:
        env = {"REDIS_URL": settings.REDIS_URL, "DATABASE_URL": settings.database_url,
               "SAM3_MODEL": settings.SAM3_MODEL}
        worker = start_worker(env, settings.DATA_DIR)
    send = partial(send_train, make_celery(settings))  # its own app: the sweep thread shares nothing with the UI
    stopping = threading.Event()
    sweeper = start_sweeper(engine, send, stopping, settings.JOB_STALE_AFTER_S, interval_s)
    return BackgroundServices(worker=worker, sweeper=sweeper, stopping=stopping)
