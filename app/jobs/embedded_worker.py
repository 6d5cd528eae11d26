"""The embedded worker: a Celery worker as a child process of `sam3-studio`, and what the
studio runs beside the web app (`start_background_services`).

- Embedded mode (no REDIS_URL), or `with_worker=True`: one worker child process with the
  studio's DATA_DIR, DATABASE_URL, REDIS_URL and SAM3_MODEL, kept running by a
  worker_supervisor.WorkerSupervisor (restarted with a back-off when it dies; its jobs
  re-queued at once). The tests run real workers the same way (style.md 10).
- Always: the sweep thread (sweep.start_sweeper) every sweep.sweep_interval_s(JOB_STALE_AFTER_S).

The worker is launched by name, `celery -A worker.celery_app` (queue.WORKER_APP): the app
never imports the worker's code (architecture.md, import direction).

The worker is `--pool=solo --concurrency=1 --prefetch-multiplier=1`: the task runs in
the worker process itself, one at a time, and the parent never touches CUDA
(reliability.md: CUDA cannot be initialised in a forked child). Gossip and mingle are
off: workers share nothing but the queue.

A worker's life is tied to the process that started it, so a `kill -9` of the studio
leaves no worker and no training behind: SIGTERM when the starting thread dies
(parent_death.py), and WORKER_PARENT_PID, which the worker watches (worker/tasks.py)
in case that signal never comes. SIGTERM is the worker's warm shutdown: it stops its
training child and puts the job back in the queue (lifecycle.release_job), so the next
studio resumes it from its checkpoint at once.
"""
from __future__ import annotations

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

from app.jobs.parent_death import parent_death_signal
from app.jobs.queue import TRAIN_QUEUE, WORKER_APP, make_celery, queued_messages, send_train
from app.jobs.sweep import requeue_jobs_of_worker, start_sweeper
from app.jobs.worker_supervisor import WorkerSupervisor
from app.settings import Settings


def worker_command(queues: str = TRAIN_QUEUE, node_name: str | None = None) -> list[str]:
    """The argv of one solo worker consuming `queues` (comma-separated)."""
    node_name = node_name or f"train-{uuid.uuid4().hex[:8]}@%h"
    return [
        sys.executable, "-m", "celery", "-A", WORKER_APP, "worker",
        "-Q", queues, "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1",
        "--without-gossip", "--without-mingle", "--loglevel=INFO", "-n", node_name,
    ]


def start_worker(env: dict[str, str], data_dir: str | Path, queues: str = TRAIN_QUEUE,
                 log_path: str | Path | None = None, node_name: str | None = None) -> subprocess.Popen:
    """Launch a worker with this process's environment updated by `env` and DATA_DIR=data_dir.

    Keys in `env` override the inherited ones (pass REDIS_URL="" for the embedded broker).
    Output is appended to `log_path` (default DATA_DIR/logs/worker.log). The worker gets
    its own process group, so `stop_worker` also reaches any children it starts, and it
    shuts down when this process dies (module docstring): call this in a thread that
    outlives the worker.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)  # the embedded broker file and the DB live here
    log_path = Path(log_path) if log_path else worker_log_path(data_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **env, "DATA_DIR": str(data_dir), "WORKER_PARENT_PID": str(os.getpid())}
    with open(log_path, "ab") as log_file:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(worker_command(queues, node_name), env=child_env, stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=parent_death_signal(signal.SIGTERM))


def worker_log_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "logs" / "worker.log"


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

    worker: WorkerSupervisor | None
    sweeper: threading.Thread
    stopping: threading.Event = field(default_factory=threading.Event)

    def stop(self, worker_timeout_s: float = 30.0) -> None:
        self.stopping.set()
        self.sweeper.join(timeout=worker_timeout_s)
        if self.worker is not None:
            self.worker.close(timeout_s=worker_timeout_s + 15)

    def worker_status(self) -> str:
        """The embedded worker's state in words for the UI banner; "" when this studio runs none."""
        return self.worker.describe() if self.worker is not None else ""


def start_background_services(settings: Settings, engine: Engine, with_worker: bool = False,
                              interval_s: float | None = None) -> BackgroundServices:
    """Start the supervised worker when `with_worker` (the embedded broker's default) and the sweep
    thread (stale after settings.JOB_STALE_AFTER_S, every sweep_interval_s of it unless `interval_s`)."""
    celery_app = make_celery(settings)  # its own app: the sweeps share nothing with the UI
    send = partial(send_train, celery_app)
    worker = None
    if with_worker:
        env = {"REDIS_URL": settings.REDIS_URL, "DATABASE_URL": settings.database_url,
               "SAM3_MODEL": settings.SAM3_MODEL}
        worker = WorkerSupervisor(
            launch=lambda node: start_worker(env, settings.DATA_DIR, node_name=node),
            stop=stop_worker,
            on_lost=lambda node: requeue_jobs_of_worker(engine, node, send),
            log_path=worker_log_path(settings.DATA_DIR),
        ).start()
    stopping = threading.Event()
    sweeper = start_sweeper(engine, send, stopping, settings.JOB_STALE_AFTER_S, interval_s,
                            queue_depth=partial(queued_messages, celery_app))
    return BackgroundServices(worker=worker, sweeper=sweeper, stopping=stopping)
