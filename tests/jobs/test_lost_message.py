"""A queued job whose broker message was lost is sent again as soon as the message cannot be
in the broker (sweep.enqueue_pending), with real processes: our own redis-server (so the test
may restart it), `sam3-studio --with-worker` on it, and the tiny SAM3.

The studio's worker is busy with another job (the slow echo task) when the fine-tune is
submitted, so its message waits in Redis; Redis restarts without persistence and drops it.
The studio's sweep sees an empty queue and a job sent long enough ago that a worker would
have claimed it: it sends the job again, and the job runs once the worker is free, within
2 minutes of the restart, not after a fixed 30 minutes.
"""
from __future__ import annotations

import time
from functools import partial

import pytest
import redis

from app.jobs.lifecycle import FINAL_STATES, create_job, enqueue
from app.jobs.queue import TRAIN_QUEUE, make_celery, send_train
from app.settings import Settings
from tests.jobs.conftest import CONFIG, SNAPSHOT, add_project
from tests.jobs.slow_echo_tasks import SLOW_ECHO_TASK
from tests.jobs.studio_run import StudioRun
from tests.jobs.test_train_task import adapters_of, job_row
from tests.services import free_port, start_redis_server
from tests.waiting import work_deadline_s

BUSY_S = 20  # how long the echo task holds the worker
RUNS_WITHIN_S = 120  # the promise: a lost message delays a job by at most this


def restart(process, port: int):
    process.terminate()
    process.wait(timeout=10)
    return start_redis_server(port)


@pytest.fixture
def own_redis():
    port = free_port()
    process = start_redis_server(port)
    state = {"process": process}
    yield port, state
    state["process"].terminate()
    state["process"].wait(timeout=10)


def test_a_message_lost_in_a_redis_restart_is_sent_again_and_the_job_runs(own_redis, tmp_path, tiny_model_dir):
    port, server = own_redis
    url = f"redis://127.0.0.1:{port}/0"
    run = StudioRun(tmp_path, tiny_model_dir, REDIS_URL=url, CELERY_EXTRA_TASK_MODULES="tests.jobs.slow_echo_tasks",
                    SLOW_ECHO_S=str(BUSY_S))
    client = redis.Redis.from_url(url)
    try:
        busy = create_job(run.engine, add_project(run.engine, "busy"), CONFIG, SNAPSHOT)
        celery_app = make_celery(Settings(DATA_DIR=run.settings.DATA_DIR, REDIS_URL=url))
        assert enqueue(run.engine, busy.id, partial(send_train, celery_app, task_name=SLOW_ECHO_TASK))
        run.wait(lambda: job_row(run.engine, busy.id).state == "running", "the worker took the busy job",
                 work_deadline_s(30))

        job = run.submit(max_steps=4, checkpoint_every=0)
        assert job.enqueued_at is not None and client.llen(TRAIN_QUEUE) == 1  # waits behind the busy job
        server["process"] = restart(server["process"], port)
        restarted_at = time.monotonic()
        assert client.llen(TRAIN_QUEUE) == 0  # the message is gone

        run.wait(lambda: job_row(run.engine, job.id).attempt >= 1, "the job ran after its message was lost",
                 RUNS_WITHIN_S)
        assert time.monotonic() - restarted_at <= RUNS_WITHIN_S
        done = run.wait(lambda: (row := job_row(run.engine, job.id)).state in FINAL_STATES and row, "the job finished")
        assert (done.state, done.attempt) == ("succeeded", 1)  # one run, whatever copies were sent
        assert len(adapters_of(run.engine, job.id)) == 1
        studio_log = "".join(path.read_text() for path in tmp_path.glob("studio-*.log"))
        assert f"jobs [{job.id}] were queued but the broker held no message for them" in studio_log
    finally:
        client.close()
        run.close()
