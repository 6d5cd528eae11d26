"""Several workers on one broker share the queue and run no job twice (reliability.md, "Jobs").

Two real worker processes (app/jobs/embedded_worker.py) consume one Redis queue; every job
is sent twice, back to back, so the two copies usually reach the two workers at the same
time and race on claim_job's compare-and-set. On SQLite (one file in the shared
DATA_DIR) and on PostgreSQL (a database of this test's own): each job is claimed
exactly once, the other copy is refused, every row ends succeeded at attempt 1, and
both workers ran jobs.
"""
from __future__ import annotations

import os
import uuid
from collections import Counter
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import pytest
from sqlmodel import SQLModel

from app.jobs.embedded_worker import start_worker, stop_worker
from app.jobs.lifecycle import FINAL_STATES, create_job, get_job
from app.jobs.queue import make_celery, send_train
from app.settings import Settings
from app.store.db import make_engine
from tests.jobs.conftest import CONFIG, SNAPSHOT, add_project
from tests.jobs.slow_echo_tasks import SLOW_ECHO_TASK
from tests.services import fresh_postgres_database
from tests.waiting import job_rows, log_tails, wait_until, work_deadline_s

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_JOBS = 8
SLOW_ECHO_S = 0.5
# Two cold workers start in ~8 s on an idle 2-core machine; then each job holds a worker SLOW_ECHO_S
# plus its claim and finish (~0.1 s), the duplicate copy ~0.1 s.
DEADLINE_S = work_deadline_s(start_s=20, units=NUM_JOBS, per_unit_s=SLOW_ECHO_S + 0.3)


def _database_url(stack: ExitStack, database: str, data_dir: Path, request) -> str:
    if database == "sqlite":
        return f"sqlite:///{(data_dir / 'studio.db').resolve()}"
    return stack.enter_context(fresh_postgres_database(request.getfixturevalue("postgres_url")))


def _wait_for(condition, data_dir: Path, what: str, engine=None, job_ids=()) -> None:
    wait_until(condition, what, DEADLINE_S,
               lambda: f"{job_rows(engine, job_ids) if engine else ''}\nlogs:\n{log_tails(sorted(data_dir.glob('*.log')))}")


def _echo_lines(data_dir: Path) -> list[tuple[str, int, str]]:
    path = data_dir / "echo.log"
    rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return [(outcome, int(job_id), node) for outcome, job_id, node in rows]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_workers_share_the_queue_and_run_each_job_once(database, redis_url, tmp_path, request):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with ExitStack() as stack:
        url = _database_url(stack, database, data_dir, request)
        engine = make_engine(url)
        stack.callback(engine.dispose)
        SQLModel.metadata.create_all(engine)  # SQLite: the tables; PostgreSQL: already migrated, a no-op
        queue = f"test-two-workers-{uuid.uuid4().hex[:8]}"  # a shared Redis may serve other runs
        env = {"REDIS_URL": redis_url, "DATABASE_URL": url, "CELERY_EXTRA_TASK_MODULES": "tests.jobs.slow_echo_tasks",
               "SLOW_ECHO_S": str(SLOW_ECHO_S),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))}
        logs = [data_dir / f"worker-{i}.log" for i in range(2)]
        for log in logs:
            worker = start_worker(env, data_dir, queues=queue, log_path=log)
            stack.callback(stop_worker, worker, 15)
        _wait_for(lambda: all(log.exists() and " ready." in log.read_text() for log in logs), data_dir,
                  "both workers were not ready")

        send = partial(send_train, make_celery(Settings(DATA_DIR=data_dir, REDIS_URL=redis_url), default_queue=queue),
                       task_name=SLOW_ECHO_TASK)
        job_ids = [create_job(engine, add_project(engine, f"project-{i}"), CONFIG, SNAPSHOT).id for i in range(NUM_JOBS)]
        for job_id in job_ids:
            send(job_id)
            send(job_id)  # a duplicate delivery, right behind the first copy
        _wait_for(lambda: len(_echo_lines(data_dir)) == 2 * NUM_JOBS, data_dir, "not every copy was run",
                  engine, job_ids)
        # A "claimed" line is written before the job's work: wait for the rows to finish too.
        _wait_for(lambda: all(get_job(engine, job_id).state in FINAL_STATES for job_id in job_ids), data_dir,
                  "not every job finished", engine, job_ids)

        lines = _echo_lines(data_dir)
        assert Counter((outcome, job_id) for outcome, job_id, _ in lines) == Counter(
            {(outcome, job_id): 1 for job_id in job_ids for outcome in ("claimed", "duplicate")})
        claimed_by = {job_id: node for outcome, job_id, node in lines if outcome == "claimed"}
        for job_id in job_ids:
            job = get_job(engine, job_id)
            assert (job.state, job.attempt, job.step) == ("succeeded", 1, 1), job
            assert job.worker == claimed_by[job_id]
        assert len(set(claimed_by.values())) == 2  # both workers ran jobs: the queue is shared
