"""What `sam3-studio` runs beside the web app: the embedded worker and the job sweeps.

- Embedded mode (no REDIS_URL), or `with_worker=True`: one Celery worker child process
  (worker/process.py) with the studio's environment (DATA_DIR, DATABASE_URL, REDIS_URL).
- Always: a daemon thread that every `interval_s` sends queued jobs the broker never got
  (`enqueue_pending`) and re-queues jobs whose worker stopped beating (`sweep_stale_jobs`).

The app never imports the worker's task code: it only starts `celery -A worker.celery_app`
as a process and sends by task name (architecture.md, import direction).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from functools import partial
from subprocess import Popen

from app.store.job_sweep import STALE_AFTER_S, enqueue_pending, sweep_stale_jobs
from app.studio import Studio

logger = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 30.0


@dataclass
class BackgroundServices:
    """Handle of the running services; `stop()` ends the sweep thread, then the worker."""

    worker: Popen | None
    sweeper: threading.Thread
    stopping: threading.Event = field(default_factory=threading.Event)

    def stop(self, worker_timeout_s: float = 30.0) -> None:
        from worker.process import stop_worker

        self.stopping.set()
        self.sweeper.join(timeout=worker_timeout_s)
        if self.worker is not None:
            stop_worker(self.worker, timeout=worker_timeout_s)


def run_sweeps(studio: Studio, send, stale_after_s: float = STALE_AFTER_S) -> None:
    """One pass: re-queue lost jobs, then send every queued job the broker does not hold."""
    changed = sweep_stale_jobs(studio.engine, stale_after_s, send)
    sent = enqueue_pending(studio.engine, send)
    if changed or sent:
        logger.info("job sweep: stale %s, sent %s", changed, sent)


def _sweep_forever(studio: Studio, send, stopping: threading.Event, interval_s: float, stale_after_s: float) -> None:
    while not stopping.wait(interval_s):
        try:
            run_sweeps(studio, send, stale_after_s)
        except Exception:  # a DB or broker blip: the next pass retries
            logger.exception("job sweep failed")


def start_background_services(studio: Studio, with_worker: bool = False, interval_s: float = SWEEP_INTERVAL_S,
                              stale_after_s: float = STALE_AFTER_S) -> BackgroundServices:
    """Start a worker process when `with_worker` (the embedded broker's default) and the sweep thread."""
    # Imported here: the Celery app module reads the environment when imported.
    from worker.celery_app import make_celery, send_train
    from worker.process import start_worker

    settings = studio.settings
    worker = None
    if with_worker:
        env = {"REDIS_URL": settings.REDIS_URL, "DATABASE_URL": settings.database_url,
               "SAM3_MODEL": settings.SAM3_MODEL}
        worker = start_worker(env, settings.DATA_DIR)
    send = partial(send_train, make_celery(settings))
    stopping = threading.Event()
    sweeper = threading.Thread(target=_sweep_forever, args=(studio, send, stopping, interval_s, stale_after_s),
                               name="job-sweep", daemon=True)
    sweeper.start()
    return BackgroundServices(worker=worker, sweeper=sweeper, stopping=stopping)
