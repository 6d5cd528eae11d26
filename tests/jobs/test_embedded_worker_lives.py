"""The studio's embedded worker with real processes: `python -m app.main --with-worker`, the
Celery worker it supervises, the training child, the embedded broker and the tiny SAM3.

- kill -9 of the worker mid-run: the studio reaps it (no zombie), starts another, and the
  job resumes from its checkpoint within JOB_STALE_AFTER_S + 30 s; one adapter lands.
- kill -9 of the studio: neither its worker nor the training child outlives it, and the
  job is back in the queue for the next studio.
- three graceful stops (SIGTERM) of the studio during one job: each puts the job back
  without spending an attempt, and the fourth run finishes it.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from app.jobs.lifecycle import FINAL_STATES
from app.jobs.metrics import read_metrics
from tests.jobs.process_tree import alive, child_pids, descendant_pids, exists
from tests.jobs.studio_run import StudioRun
from tests.jobs.test_train_task import adapters_of, job_row
from tests.waiting import job_rows, work_deadline_s

STALE_AFTER_S = 30  # the bound of the resume after a kill -9 is this + 30 s
ORPHAN_SHUTDOWN_S = 30  # worker/tasks.py: an orphaned worker kills itself after this at the latest


@pytest.fixture
def run(tmp_path, tiny_model_dir):
    studio_run = StudioRun(tmp_path, tiny_model_dir, JOB_STALE_AFTER_S=str(STALE_AFTER_S))
    yield studio_run
    studio_run.close()


def test_a_killed_embedded_worker_is_restarted_and_its_job_resumes_from_its_checkpoint(run):
    job = run.submit(max_steps=30, checkpoint_every=5)
    run.wait(lambda: (row := job_row(run.engine, job.id)).checkpoint_path and row.step >= 7, "a checkpoint and step 7")
    worker = run.worker_pid()
    training = child_pids(worker)
    assert training, "the worker trains in a child process"
    os.kill(worker, signal.SIGKILL)
    killed_at = time.monotonic()
    run.wait(lambda: not any(alive(pid) for pid in training), "the training child died with its worker",
             work_deadline_s(3))
    run.wait(lambda: not exists(worker), "the studio reaped its dead worker (no zombie)", work_deadline_s(3))

    resumed = run.wait(lambda: (row := job_row(run.engine, job.id)).attempt == 2 and row.state != "queued" and row,
                       "a new worker resumed the job", STALE_AFTER_S + 30)
    assert time.monotonic() - killed_at <= STALE_AFTER_S + 30 and resumed.worker
    assert run.worker_pid() != worker
    done = run.wait(lambda: (row := job_row(run.engine, job.id)).state in FINAL_STATES and row, "the job finished")
    assert (done.state, done.attempt, done.step) == ("succeeded", 2, 30)
    assert len(adapters_of(run.engine, job.id)) == 1
    assert "resumed from" in (run.settings.DATA_DIR / "jobs" / str(job.id) / "attempt-2.log").read_text()
    studio_log = "".join(path.read_text() for path in run.tmp_path.glob("studio-*.log"))
    assert "exited on its own: killed by SIGKILL" in studio_log


def test_kill_9_of_the_studio_leaves_no_worker_and_no_training_running(run):
    job = run.submit(max_steps=400, checkpoint_every=0)
    run.wait(lambda: job_row(run.engine, job.id).step >= 1, "the job trains")
    worker = run.worker_pid()
    family = [worker, *descendant_pids(worker)]
    assert len(family) >= 2, "a worker and its training child"
    os.kill(run.studio.pid, signal.SIGKILL)
    run.studio.wait(timeout=10)
    run.wait(lambda: not any(alive(pid) for pid in family), "no worker or training process outlived the studio",
             ORPHAN_SHUTDOWN_S + work_deadline_s(5))
    # The worker's warm shutdown put the job back: the next studio resumes it at once.
    row = job_row(run.engine, job.id)
    assert (row.state, row.enqueued_at, row.attempt, row.max_attempts) == ("queued", None, 1, 4)


def test_three_graceful_restarts_during_one_job_still_finish_it(run):
    job = run.submit(max_steps=40, checkpoint_every=2)
    for restart in range(3):
        attempt = restart + 1
        resumed_at = job_row(run.engine, job.id).step
        run.wait(lambda: (row := job_row(run.engine, job.id)).attempt == attempt and row.state == "running"
                 and row.step >= resumed_at + 3, f"attempt {attempt} trains")
        family = [run.worker_pid(), *descendant_pids(run.worker_pid())]
        run.studio.send_signal(signal.SIGTERM)
        assert run.studio.wait(timeout=60) == 0  # a clean stop: the services were stopped
        assert not any(alive(pid) for pid in family)
        row = job_row(run.engine, job.id)
        assert (row.state, row.attempt, row.max_attempts) == ("queued", attempt, 3 + attempt), job_rows(run.engine, [job.id])
        run.studio = run.start()
    done = run.wait(lambda: (row := job_row(run.engine, job.id)).state in FINAL_STATES and row, "the job finished")
    assert (done.state, done.attempt, done.max_attempts, done.step) == ("succeeded", 4, 6, 40), done.error
    assert len(adapters_of(run.engine, job.id)) == 1
    train_steps = [r.step for r in read_metrics(run.engine, job.id) if r.name == "loss" and r.split == "train"]
    assert sorted(train_steps) == list(range(1, 41))  # each step once: rows after a checkpoint are rewritten
