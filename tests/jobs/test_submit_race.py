"""Two clicks on "Fine-tune" at once must not start two jobs for one project (jobs.create_job:
"the check and the insert share one write transaction, so two clicks cannot both pass it").

Six threads (Gradio runs handlers in threads) call create_job for the same project behind
a barrier, ten rounds: at most one job per project may exist, the others get JobError.
SQLite holds: BEGIN IMMEDIATE serialises the transactions. PostgreSQL does not yet: under
READ COMMITTED both transactions read "no active job" and both insert (measured: 28 of 30
rounds started several jobs). The fix belongs in app/store/jobs.py, e.g. lock the project
row first (SELECT ... FOR UPDATE) or a partial unique index on job(project_id) for the
active states; until then the PostgreSQL case is a strict xfail, so the fix shows up as
an XPASS that asks for the marker to go.
"""
from __future__ import annotations

import threading

import pytest

from app.store.jobs import JobError, create_job, list_jobs
from tests.jobs.conftest import CONFIG, SNAPSHOT, add_project

CLICKS = 6
ROUNDS = 10


def _click_at_once(engine, project_id: int) -> list[str]:
    barrier = threading.Barrier(CLICKS)
    outcomes: list[str] = []

    def click() -> None:
        barrier.wait()
        try:
            create_job(engine, project_id, CONFIG, SNAPSHOT)
            outcomes.append("created")
        except JobError:
            outcomes.append("refused")

    threads = [threading.Thread(target=click) for _ in range(CLICKS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def test_simultaneous_submits_start_one_job(request, engine):
    if engine.dialect.name == "postgresql":
        request.applymarker(pytest.mark.xfail(strict=True, reason="create_job's check-then-insert races under "
                                              "READ COMMITTED; app/store/jobs.py must lock the project row"))
    started = []
    for round_number in range(ROUNDS):
        project_id = add_project(engine, f"race-{round_number}")
        outcomes = _click_at_once(engine, project_id)
        assert len(outcomes) == CLICKS
        started.append(len(list_jobs(engine, project_id)))
    assert started == [1] * ROUNDS
