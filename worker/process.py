"""Start and stop a Celery worker as a child process: `sam3-studio` runs its embedded
worker this way, and the tests run real workers this way (style.md 10).

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
import uuid
from pathlib import Path


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


def worker_command(queues: str = "train", node_name: str | None = None) -> list[str]:
    """The argv of one solo worker consuming `queues` (comma-separated)."""
    node_name = node_name or f"train-{uuid.uuid4().hex[:8]}@%h"
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-Q", queues, "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1",
        "--without-gossip", "--without-mingle", "--loglevel=INFO", "-n", node_name,
    ]


def start_worker(env: dict[str, str], data_dir: str | Path, queues: str = "train",
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
