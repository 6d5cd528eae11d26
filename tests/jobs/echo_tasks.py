"""A test-only Celery task run by a real worker (CELERY_EXTRA_TASK_MODULES=tests.jobs.echo_tasks).

"worker.echo" does what the training task's skeleton does (architecture.md step 2):
claim the job with the compare-and-set, exit untouched on a duplicate, otherwise beat
and finish. Each delivery appends "claimed <id>" or "duplicate <id>" to DATA_DIR/echo.log.
"""
from __future__ import annotations

from celery import current_task, shared_task

from app.jobs.lifecycle import beat, claim_job, finish_job
from app.settings import load_settings
from app.store.db import make_engine

ECHO_TASK = "worker.echo"


@shared_task(name=ECHO_TASK)
def echo(job_id: int) -> None:
    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        claimed = claim_job(engine, job_id, current_task.request.hostname or "echo")
        with open(settings.DATA_DIR / "echo.log", "a") as log:
            log.write(f"{'claimed' if claimed else 'duplicate'} {job_id}\n")
        if claimed:
            beat(engine, job_id, step=1, total_steps=1)
            finish_job(engine, job_id, "succeeded")
    finally:
        engine.dispose()
