"""The training task `worker.train(job_id)`, thin like a web view (style.md 8).

Claim the job (compare-and-set; False = a duplicate delivery: leave everything as it
is), then run it in a child process, `python -m worker.run_job <id>` (under
`torch.distributed.run` when the job asks for several GPUs), and wait. The child's
exit gives back all its GPU memory: under `--pool=solo` the task runs inside the
worker itself and `worker_max_tasks_per_child` never recycles it. The child gets
SIGKILL when the worker dies (Linux PR_SET_PDEATHSIG; the task runs in the worker's
main thread, which forks the child and lives as long as the worker), so a `kill -9` of
the worker leaves no orphan training on the GPU; the sweeps then resume the job.

A worker that shuts down (SIGTERM/SIGINT: `sam3-studio` stopping or dying, `docker
stop`) passes SIGTERM on to its training child at once: Celery's warm shutdown would
otherwise wait for the whole run. A child stopped so is not a failure: its job goes back
to queued (release_job, no attempt spent) and resumes from its checkpoint when sent again.
A worker started by the studio (settings.WORKER_PARENT_PID) also watches that process
and shuts down once it is gone, then kills itself if that takes longer than
ORPHAN_SHUTDOWN_S, in case the parent-death signal never came.

On worker start (`worker_ready`) the sweeps run once, so a job orphaned by a killed
worker is re-queued and picked up by the new one. settings.JOB_STALE_AFTER_S sets how old
a heartbeat must be to count as lost; tests lower it.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from functools import partial
from pathlib import Path

from celery import current_task, shared_task
from celery.signals import worker_init, worker_ready, worker_shutting_down

from app.jobs.lifecycle import claim_job, finish_job, get_job, release_job
from app.jobs.parent_death import kill_self, parent_death_signal, watch_parent
from app.jobs.queue import TRAIN_TASK, queued_messages, send_train
from app.jobs.sweep import run_sweeps
from app.settings import Settings, load_settings
from app.store.db import make_engine

logger = logging.getLogger(__name__)

ERROR_TAIL_LINES = 20
ORPHAN_SHUTDOWN_S = 30.0  # a worker whose studio is gone kills itself if its warm shutdown takes longer
_shutting_down = threading.Event()  # set by worker_shutting_down (SIGTERM / SIGINT to the worker)
_running_child: list[subprocess.Popen] = []  # the training child of the task in progress (solo pool: at most one)


def job_command(job_id: int, gpus: int) -> list[str]:
    """argv of the child that trains job `job_id` on `gpus` GPUs (torchrun above 1)."""
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
                "-m", "worker.run_job", str(job_id)]
    return [sys.executable, "-m", "worker.run_job", str(job_id)]


def _job_gpus(config_json: str) -> int:
    try:
        gpus = json.loads(config_json).get("gpus", 1)
    except (ValueError, AttributeError):
        return 1  # the child reports the bad config as the job's error
    return gpus if isinstance(gpus, int) and gpus >= 1 else 1


def _log_tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    with open(path, errors="replace") as log:
        return "".join(deque(log, maxlen=lines)).strip()


def run_child(settings: Settings, job_id: int, attempt: int, gpus: int) -> int:
    """Run the job's child process to its end; output goes to DATA_DIR/jobs/<id>/attempt-<n>.log.

    Returns the exit code. A non-zero exit that left the row running fails the job with
    the last lines of the log (an import error, an OOM kill, a segfault).
    """
    log_path = settings.DATA_DIR / "jobs" / str(job_id) / f"attempt-{attempt}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(job_command(job_id, gpus), stdin=subprocess.DEVNULL, stdout=log_file,
                                 stderr=subprocess.STDOUT, preexec_fn=parent_death_signal(signal.SIGKILL))
    _running_child.append(child)
    try:
        if _shutting_down.is_set():  # the shutdown came while the child was starting
            child.terminate()
        code = child.wait()
    finally:
        _running_child.remove(child)
    if code != 0:
        engine = make_engine(settings.database_url)
        try:
            if code == -signal.SIGTERM or _shutting_down.is_set():  # stopped from outside, not a training failure
                state = release_job(engine, job_id, attempt=attempt)
                logger.warning("job %d interrupted by shutdown (exit %d): %s", job_id, code, state or "not ours any more")
                return code
            reason = f"training process exited with code {code}" if code > 0 else f"training process killed by signal {-code}"
            if finish_job(engine, job_id, "failed", error=f"{reason}:\n{_log_tail(log_path)}", attempt=attempt):
                logger.error("job %d failed: %s (log %s)", job_id, reason, log_path)
        finally:
            engine.dispose()
    return code


@worker_shutting_down.connect
def _note_shutdown(**_) -> None:
    """The worker got SIGTERM/SIGINT: stop the training child now (a warm shutdown would wait
    for the whole run); a child that dies now was stopped with it (torchrun exits 1, not -15)."""
    _shutting_down.set()
    for child in list(_running_child):
        child.terminate()  # a no-op once the child was reaped


def _shut_down_orphan() -> None:
    """The studio that started this worker is gone: warm shutdown, and SIGKILL if it hangs."""
    logger.warning("the process that started this worker is gone: shutting down")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_SHUTDOWN_S)
    kill_self()


@worker_init.connect
def watch_the_studio(**_) -> None:
    """A worker started by sam3-studio (WORKER_PARENT_PID) stops once the studio is gone."""
    parent_pid = load_settings().WORKER_PARENT_PID
    if parent_pid:
        watch_parent(parent_pid, on_gone=_shut_down_orphan)


@shared_task(name=TRAIN_TASK, acks_late=True)
def train(job_id: int) -> None:
    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        if not claim_job(engine, job_id, current_task.request.hostname or "worker"):
            logger.info("job %d: duplicate delivery or not queued any more; nothing to do", job_id)
            return
        job = get_job(engine, job_id)
    finally:
        engine.dispose()
    run_child(settings, job_id, job.attempt, _job_gpus(job.config_json))


@worker_ready.connect
def sweep_on_start(sender=None, **_) -> None:
    """Re-queue jobs whose worker died (and send jobs the broker never got) as this worker starts."""
    app = sender.app if sender is not None else current_task.app
    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        run_sweeps(engine, partial(send_train, app), settings.JOB_STALE_AFTER_S, partial(queued_messages, app))
    except Exception:  # a sweep failure must not stop the worker; the studio's sweep retries
        logger.exception("start sweep failed")
    finally:
        engine.dispose()
