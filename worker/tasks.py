"""The training task `worker.train(job_id)`, thin like a web view (style.md 8).

Claim the job (compare-and-set; False = a duplicate delivery: leave everything as it
is), then run it in a child process, `python -m worker.run_job <id>` (under
`torch.distributed.run` when the job asks for several GPUs), and wait. The child's
exit gives back all its GPU memory: under `--pool=solo` the task runs inside the
worker itself and `worker_max_tasks_per_child` never recycles it. The child gets
SIGKILL when the worker dies (Linux PR_SET_PDEATHSIG), so a `kill -9` of the worker
leaves no orphan training on the GPU; the stale-heartbeat sweep then resumes the job.
A child stopped with its worker (SIGTERM: `sam3-studio` or the worker shutting down) is
not a failure: its job goes back to queued and resumes from its checkpoint when sent again.

On worker start (`worker_ready`) the sweeps run once, so a job orphaned by a killed
worker is re-queued and picked up by the new one. settings.JOB_STALE_AFTER_S sets how old
a heartbeat must be to count as lost; tests lower it.
"""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import sys
from collections import deque
from functools import partial
from pathlib import Path

from celery import current_task, shared_task
from celery.signals import worker_ready, worker_shutting_down

from app.jobs.embedded_worker import kill_with_parent
from app.jobs.lifecycle import claim_job, finish_job, get_job, release_job
from app.jobs.queue import TRAIN_TASK, send_train
from app.jobs.sweep import run_sweeps
from app.settings import Settings, load_settings
from app.store.db import make_engine

logger = logging.getLogger(__name__)

ERROR_TAIL_LINES = 20
_shutting_down = threading.Event()  # set by worker_shutting_down (SIGTERM / SIGINT to the worker)


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
                                 stderr=subprocess.STDOUT, preexec_fn=kill_with_parent)
    code = child.wait()
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
    """The worker got SIGTERM/SIGINT: a child that dies now was stopped with it (torchrun exits 1, not -15)."""
    _shutting_down.set()


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
        run_sweeps(engine, partial(send_train, app), settings.JOB_STALE_AFTER_S)
    except Exception:  # a sweep failure must not stop the worker; the studio's sweep retries
        logger.exception("start sweep failed")
    finally:
        engine.dispose()
