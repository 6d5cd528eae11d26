"""A real message round trip through each broker (Redis, the embedded SQLite file) to a
real worker process started with app/jobs/embedded_worker.py, running tests.jobs.echo_tasks."""
from __future__ import annotations

import os
import uuid
from functools import partial
from pathlib import Path

import pytest

from app.jobs.embedded_worker import start_worker, stop_worker
from app.jobs.lifecycle import FINAL_STATES, create_job, get_job, submit_job
from app.jobs.queue import make_celery, send_train
from app.settings import Settings
from tests.jobs.conftest import CONFIG, SNAPSHOT, new_store
from tests.jobs.echo_tasks import ECHO_TASK
from tests.waiting import job_rows, log_tails, wait_until, work_deadline_s

REPO_ROOT = Path(__file__).resolve().parents[2]
# A cold worker starts in ~4 s on an idle 2-core machine; an echo job takes milliseconds.
DEADLINE_S = work_deadline_s(start_s=15, units=2, per_unit_s=1.0)


@pytest.fixture(scope="module", params=["redis", "embedded"])
def broker(request, tmp_path_factory):
    """(engine, project_id, send, data_dir, worker log) with a worker consuming a queue of its own."""
    data_dir = tmp_path_factory.mktemp(f"broker-{request.param}")
    engine, project_id = new_store(data_dir)
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    queue = f"test-train-{uuid.uuid4().hex[:8]}"  # a shared Redis may serve other test runs
    settings = Settings(DATA_DIR=data_dir, REDIS_URL=redis_url)
    sender_app = make_celery(settings, default_queue=queue)
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": settings.database_url,
        "CELERY_EXTRA_TASK_MODULES": "tests.jobs.echo_tasks",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])),
    }
    log_path = data_dir / "worker.log"
    proc = start_worker(env, data_dir, queues=queue, log_path=log_path)
    try:
        yield engine, project_id, partial(send_train, sender_app, task_name=ECHO_TASK), data_dir, log_path
    finally:
        stop_worker(proc, timeout=15)
        engine.dispose()


def echo_lines(data_dir: Path, job_id: int) -> list[str]:
    path = data_dir / "echo.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split()[0] for line in lines if line.split()[1] == str(job_id)]


def wait_for(condition, log_path: Path, what: str, engine, job_id: int) -> None:
    wait_until(condition, what, DEADLINE_S, lambda: f"{job_rows(engine, [job_id])}\n{log_tails([log_path])}")


def test_a_sent_job_reaches_succeeded(broker):
    engine, project_id, send, data_dir, log_path = broker
    job = submit_job(engine, project_id, CONFIG, SNAPSHOT, send)
    assert job.enqueued_at is not None
    wait_for(lambda: get_job(engine, job.id).state == "succeeded", log_path, f"job {job.id} did not succeed",
             engine, job.id)
    done = get_job(engine, job.id)
    assert (done.attempt, done.step, done.total_steps) == (1, 1, 1)
    assert done.worker.startswith("train-")
    assert echo_lines(data_dir, job.id) == ["claimed"]


def test_a_duplicate_delivery_leaves_exactly_one_claim(broker):
    engine, project_id, send, data_dir, log_path = broker
    job = create_job(engine, project_id, CONFIG, SNAPSHOT)
    send(job.id)
    send(job.id)
    wait_for(lambda: len(echo_lines(data_dir, job.id)) == 2, log_path, f"both copies of job {job.id} were not run",
             engine, job.id)
    wait_for(lambda: get_job(engine, job.id).state in FINAL_STATES, log_path, f"job {job.id} did not finish", engine, job.id)
    assert sorted(echo_lines(data_dir, job.id)) == ["claimed", "duplicate"]
    done = get_job(engine, job.id)
    assert (done.state, done.attempt) == ("succeeded", 1)
