"""The studio's embedded worker with real processes: `python -m app.main --with-worker`, the
Celery worker it supervises, the training child, the embedded broker and the tiny SAM3.

- kill -9 of the worker mid-run: the studio reaps it (no zombie), starts another, and the
  job resumes from its checkpoint within JOB_STALE_AFTER_S + 30 s; one adapter lands.
- SIGTERM to the studio: it stops cleanly (exit 0), its worker puts the job back in
  the queue without spending an attempt, and the next studio resumes it; kill -9 of that
  studio: neither its worker nor the training child outlives it, and the job is back
  in the queue too.
- three graceful stops of the studio's services during one job (what SIGTERM or Ctrl-C
  does): each puts the job back without spending an attempt, and the fourth run finishes it.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from app.jobs.embedded_worker import start_background_services
from app.jobs.lifecycle import FINAL_STATES, submit_job
from app.jobs.metrics import read_metrics
from app.settings import Settings
from tests.jobs.process_tree import alive, child_pids, descendant_pids, exists
from tests.jobs.studio_run import StudioRun
from tests.jobs.test_train_task import (REPO_ROOT, adapters_of, job_config, job_deadline_s, job_row, new_project,
                                        sender)
from tests.waiting import job_rows, log_tails, wait_until, work_deadline_s

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


def test_sigterm_stops_the_studio_cleanly_and_kill_9_leaves_nothing_running(run):
    job = run.submit(max_steps=400, checkpoint_every=0)
    for attempt, stop_signal in ((1, signal.SIGTERM), (2, signal.SIGKILL)):
        run.wait(lambda: (row := job_row(run.engine, job.id)).attempt == attempt and row.state == "running"
                 and row.step >= 1, f"attempt {attempt} trains")
        worker = run.worker_pid()
        family = [worker, *descendant_pids(worker)]
        assert len(family) >= 2, "a worker and its training child"
        run.studio.send_signal(stop_signal)
        code = run.studio.wait(timeout=60)
        assert code == (0 if stop_signal == signal.SIGTERM else -signal.SIGKILL)  # SIGTERM: the services were stopped
        run.wait(lambda: not any(alive(pid) for pid in family), "no worker or training process outlived the studio",
                 ORPHAN_SHUTDOWN_S + work_deadline_s(5))
        # Either way the worker's warm shutdown put the job back, spending no attempt: the next studio resumes it.
        row = job_row(run.engine, job.id)
        assert (row.state, row.enqueued_at, row.attempt, row.max_attempts) == ("queued", None, attempt, 3 + attempt)
        if attempt == 1:
            run.studio = run.start()


def test_three_graceful_restarts_during_one_job_still_finish_it(tmp_path, tiny_model_dir, monkeypatch):
    """The studio's background services (its supervised worker and sweep) stopped as SIGTERM or
    Ctrl-C stops them (app/main.py), three times during one job, then started once more."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    settings, engine, project_id, snapshot = new_project(tmp_path / "data", tmp_path / "synthetic")
    settings = Settings(DATA_DIR=settings.DATA_DIR, REDIS_URL="", SAM3_MODEL=str(tiny_model_dir))
    job = submit_job(engine, project_id, job_config(tiny_model_dir, max_steps=40, checkpoint_every=2), snapshot,
                     sender(settings, ""))

    def evidence() -> str:
        logs = [settings.DATA_DIR / "logs" / "worker.log", *sorted(settings.DATA_DIR.glob("jobs/*/*.log"))]
        return f"{job_rows(engine, [job.id])}\n{log_tails(logs)}"

    try:
        for restart in range(3):
            attempt, resumed_at = restart + 1, job_row(engine, job.id).step
            services = start_background_services(settings, engine, with_worker=True)
            try:
                wait_until(lambda: (row := job_row(engine, job.id)).attempt == attempt and row.state == "running"
                           and row.step >= resumed_at + 3, f"attempt {attempt} trains", job_deadline_s(10), evidence)
                worker = services.worker.process
                family = [worker.pid, *descendant_pids(worker.pid)]
            finally:
                services.stop()
            assert not any(alive(pid) for pid in family)
            row = job_row(engine, job.id)
            assert (row.state, row.attempt, row.max_attempts) == ("queued", attempt, 3 + attempt), evidence()
        services = start_background_services(settings, engine, with_worker=True)
        try:
            done = wait_until(lambda: (row := job_row(engine, job.id)).state in FINAL_STATES and row,
                              "the job finished", job_deadline_s(40), evidence)
        finally:
            services.stop()
        assert (done.state, done.attempt, done.max_attempts, done.step) == ("succeeded", 4, 6, 40), done.error
        assert len(adapters_of(engine, job.id)) == 1
        train_steps = [r.step for r in read_metrics(engine, job.id) if r.name == "loss" and r.split == "train"]
        # each step once: rows after a checkpoint are rewritten, rows up to it were written before it
        assert sorted(train_steps) == list(range(1, 41)), evidence()
    finally:
        engine.dispose()
