"""Two clicks on "Fine-tune" at once must not start two jobs for one project (jobs.create_job:
"the check and the insert share one write transaction, so two clicks cannot both pass it").

Six threads (Gradio runs handlers in threads) call create_job for the same project behind
a barrier, ten rounds: at most one job per project may exist, the others get JobError.
SQLite: BEGIN IMMEDIATE serialises the transactions. PostgreSQL: create_job locks the
project row first (SELECT ... FOR UPDATE); without it, under READ COMMITTED both
transactions read "no active job" and both insert (measured: 28 of 30 rounds started
several jobs).
"""
from __future__ import annotations

import threading

from app.jobs.lifecycle import JobError, create_job, list_jobs
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


def test_simultaneous_submits_start_one_job(engine):
    started = []
    for round_number in range(ROUNDS):
        project_id = add_project(engine, f"race-{round_number}")
        outcomes = _click_at_once(engine, project_id)
        assert len(outcomes) == CLICKS
        started.append(len(list_jobs(engine, project_id)))
    assert started == [1] * ROUNDS
