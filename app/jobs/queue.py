"""The job queue: the Celery app factory and the sender (architecture.md, modes table).

One code path for the embedded broker and Redis; only settings.broker_url differs. The
studio sends by task name (`send_train`: TRAIN_TASK on TRAIN_QUEUE) and never imports the
task code; the workers run `celery -A worker.celery_app` (WORKER_APP), whose module builds
its app here with the task modules included. There is no result backend: the job rows are
the truth.
"""
from __future__ import annotations

import threading
from functools import partial
from typing import Iterable

from celery import Celery

from app.jobs.lifecycle import SendJob
from app.settings import Settings

TRAIN_QUEUE = "train"
TRAIN_TASK = "worker.train"
WORKER_APP = "worker.celery_app"  # the `-A` of every worker: embedded_worker.py, docker-compose.yml

# The sending side (a click in the UI) must fail fast when the broker is down: the
# job row is already committed and the sweep sends it later. One connect attempt of
# at most this long, one quick retry, no publish retry.
SEND_CONNECT_TIMEOUT_S = 2.0
SEND_TRANSPORT_OPTIONS = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def broker_transport_options(settings: Settings) -> dict:
    """Redis: the visibility timeout (settings.CELERY_VISIBILITY_TIMEOUT_S). Embedded (kombu's
    SQLAlchemy transport): a SQLite busy timeout; that transport hands every option to
    create_engine, so nothing else may go in (it has no visibility timeout: a message taken by
    a worker that dies is gone, and the stale-heartbeat sweep re-sends the job).
    """
    if settings.embedded_broker:
        return {"connect_args": {"timeout": 30}}
    return {"visibility_timeout": settings.CELERY_VISIBILITY_TIMEOUT_S}


def make_celery(settings: Settings, include: Iterable[str] = (), default_queue: str = TRAIN_QUEUE) -> Celery:
    """A Celery app on settings.broker_url with the studio's delivery guarantees.

    `include`: the task modules a worker imports (worker/celery_app.py names them); a
    sender needs none. Creates nothing: with the embedded broker, DATA_DIR must exist
    before the first send or worker start (open_studio and start_worker create it).
    """
    app = Celery("sam3_studio", broker=settings.broker_url, include=[name for name in include if name])
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
        broker_transport_options=broker_transport_options(settings),
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


_senders: dict[str, SendJob] = {}
_senders_lock = threading.Lock()


def train_sender(settings: Settings) -> SendJob:
    """`partial(send_train, make_celery(settings))`, built once per broker URL and process."""
    with _senders_lock:
        if settings.broker_url not in _senders:
            _senders[settings.broker_url] = partial(send_train, make_celery(settings))
        return _senders[settings.broker_url]


def queued_messages(celery_app: Celery) -> int:
    """Messages waiting in the app's default queue (Redis: the queue's lists; embedded: the
    visible rows of the broker file), not counting those a worker has taken. Fails as
    quickly as `send_train` when the broker is down.
    """
    connection = celery_app.connection_for_read(connect_timeout=SEND_CONNECT_TIMEOUT_S,
                                                transport_options=SEND_TRANSPORT_OPTIONS)
    with connection, connection.channel() as channel:
        # A non-passive declare: an empty Redis queue has no key, which a passive one reports as missing.
        declared = channel.queue_declare(queue=celery_app.conf.task_default_queue, durable=True, auto_delete=False)
        return declared.message_count

