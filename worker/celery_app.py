"""The Celery app: one code path for the embedded broker and Redis (architecture.md, modes table).

A worker runs `celery -A worker.celery_app worker -Q train --pool=solo -c 1` (or
worker/process.py). The app side only sends, by task name (`send_train`), and never
imports worker.tasks. There is no result backend: the job rows are the truth.

Environment read here, besides app.settings (names kept out of Settings because only
workers and tests use them):
  CELERY_EXTRA_TASK_MODULES   comma-separated modules a worker imports besides
                              worker.tasks (tests use it for tests.jobs.echo_tasks)
  CELERY_VISIBILITY_TIMEOUT_S Redis visibility timeout in seconds (default 24 h; tests
                              lower it to provoke a second delivery)
"""
from __future__ import annotations

import importlib.util
import logging
import os
from typing import Iterable

from celery import Celery

from app.settings import Settings, SettingsError, load_settings

logger = logging.getLogger(__name__)

TRAIN_QUEUE = "train"
TRAIN_TASK = "worker.train"
TASK_MODULE = "worker.tasks"

# Redis re-delivers an unacknowledged message after the visibility timeout; with
# acks_late a run longer than it gets a second copy (celery #5935). Longer than any
# run, so that only a lost worker causes one; claim_job makes a second copy harmless.
DEFAULT_VISIBILITY_TIMEOUT_S = 24 * 3600

# The sending side (a click in the UI) must fail fast when the broker is down: the
# job row is already committed and the sweep sends it later. One connect attempt of
# at most this long, one quick retry, no publish retry.
SEND_CONNECT_TIMEOUT_S = 2.0
SEND_TRANSPORT_OPTIONS = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def task_modules(extra_task_modules: Iterable[str] = ()) -> list[str]:
    """worker.tasks when it exists (it is written after this module), plus the extras.

    Only absence is tolerated: a worker.tasks that exists but fails to import still
    stops the worker with its error.
    """
    modules = [TASK_MODULE] if importlib.util.find_spec(TASK_MODULE) is not None else []
    if not modules:
        logger.info("%s not found: this worker has no training task", TASK_MODULE)
    return modules + [name for name in extra_task_modules if name]


def broker_transport_options(settings: Settings, visibility_timeout_s: float) -> dict:
    """Redis: the visibility timeout. Embedded (kombu's SQLAlchemy transport): a SQLite
    busy timeout; that transport hands every option to create_engine, so nothing else may go
    in (it has no visibility timeout: a message taken by a worker that dies is gone, and the
    stale-heartbeat sweep re-sends the job).
    """
    if settings.embedded_broker:
        return {"connect_args": {"timeout": 30}}
    return {"visibility_timeout": visibility_timeout_s}


def make_celery(settings: Settings, extra_task_modules: Iterable[str] = (),
                visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
                default_queue: str = TRAIN_QUEUE) -> Celery:
    """A Celery app on settings.broker_url with the studio's delivery guarantees.

    Creates nothing: with the embedded broker, DATA_DIR must exist before the first
    send or worker start (open_studio and start_worker create it).
    """
    app = Celery("sam3_studio", broker=settings.broker_url, include=task_modules(extra_task_modules))
    app.conf.update(
        task_default_queue=default_queue,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        # Ack after the task returns, and give the message back if the worker process dies:
        # a lost run is delivered again; claim_job turns a copy of a live run into a no-op.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a waiting job stays in the queue for another GPU worker
        worker_concurrency=1,
        # Recycle the pool process after each training task so its GPU memory is returned.
        # Celery applies this to prefork children only; under --pool=solo the task runs in
        # the worker itself and this has no effect.
        worker_max_tasks_per_child=1,
        broker_transport_options=broker_transport_options(settings, visibility_timeout_s),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits for its broker forever
        # A run keeps going through a broker blip; acks_late and the claim settle the rest.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
        # The SQLAlchemy transport has no fanout exchange, which remote control needs.
        worker_enable_remote_control=not settings.embedded_broker,
    )
    return app


def send_train(celery_app: Celery, job_id: int, task_name: str = TRAIN_TASK) -> None:
    """Publish `task_name(job_id)` to the app's default queue; raises quickly if the broker is down.

    A fresh connection with short timeouts (SEND_*), not the app's pool, so a down
    broker costs a click about SEND_CONNECT_TIMEOUT_S, not Celery's default retry loop.
    """
    connection = celery_app.connection_for_write(connect_timeout=SEND_CONNECT_TIMEOUT_S,
                                                 transport_options=SEND_TRANSPORT_OPTIONS)
    with connection:
        celery_app.send_task(task_name, args=[job_id], queue=celery_app.conf.task_default_queue,
                             connection=connection, retry=False)


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        seconds = float(raw) if raw else default
    except ValueError:
        raise SettingsError(f"invalid environment: {name}: expected seconds, got {raw!r}") from None
    if seconds <= 0:
        raise SettingsError(f"invalid environment: {name}: must be > 0, got {raw!r}")
    return seconds


celery_app = make_celery(
    load_settings(),
    extra_task_modules=_env_list("CELERY_EXTRA_TASK_MODULES"),
    visibility_timeout_s=_env_seconds("CELERY_VISIBILITY_TIMEOUT_S", DEFAULT_VISIBILITY_TIMEOUT_S),
)
