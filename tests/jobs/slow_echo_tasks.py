"""A test-only Celery task that holds its worker for a while (CELERY_EXTRA_TASK_MODULES=tests.jobs.slow_echo_tasks).

"worker.slow_echo" claims the job with the compare-and-set like the training task
(architecture.md step 2), then keeps its worker busy for SLOW_ECHO_S seconds (default
0.5) before finishing, so that two workers on one queue both get work and duplicate
copies of a job meet a run in flight. Each delivery appends
"<claimed|duplicate> <job_id> <worker node>" to DATA_DIR/echo.log.
"""
from __future__ import annotations

import os
import time

from celery import current_task, shared_task

from app.jobs.lifecycle import beat, claim_job, finish_job
from app.settings import load_settings
from app.store.db import make_engine

SLOW_ECHO_TASK = "worker.slow_echo"


@shared_task(name=SLOW_ECHO_TASK, acks_late=True)
def slow_echo(job_id: int) -> None:
    settings = load_settings()
    engine = make_engine(settings.database_url)
    node = current_task.request.hostname or "echo"
    try:
        claimed = claim_job(engine, job_id, node)
        with open(settings.DATA_DIR / "echo.log", "a") as log:
            log.write(f"{'claimed' if claimed else 'duplicate'} {job_id} {node}\n")
        if claimed:
            time.sleep(float(os.environ.get("SLOW_ECHO_S", "0.5")))
            beat(engine, job_id, step=1, total_steps=1)
            finish_job(engine, job_id, "succeeded")
    finally:
        engine.dispose()
