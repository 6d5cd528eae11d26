"""A training child stopped with its worker (SIGTERM) is not a failed job: run_child puts
the job back in the queue to resume from its checkpoint (release_job), while a child
that crashes on its own still fails the job with its log tail."""
from __future__ import annotations

import sys
import threading
import time

from app.jobs.lifecycle import claim_job, create_job, get_job, release_job, request_cancel
from app.settings import Settings
from tests.jobs.conftest import CONFIG, SNAPSHOT
from tests.waiting import wait_until, work_deadline_s
from worker import tasks


def running_job(engine, project_id: int) -> int:
    job = create_job(engine, project_id, CONFIG, SNAPSHOT)
    assert claim_job(engine, job.id, "worker-a")
    return job.id


def settings_for(engine, tmp_path) -> Settings:
    return Settings(DATA_DIR=tmp_path / "data", DATABASE_URL=engine.url.render_as_string(hide_password=False))


def test_release_requeues_a_running_job_and_guards_the_attempt(engine, project_id):
    job_id = running_job(engine, project_id)
    assert release_job(engine, job_id, attempt=2) is None  # not this attempt's job
    assert release_job(engine, job_id, attempt=1) == "queued"
    job = get_job(engine, job_id)
    assert (job.state, job.enqueued_at, job.worker, job.attempt) == ("queued", None, "", 1)
    assert job.max_attempts == 4  # a shutdown spends no attempt: one more is granted
    assert release_job(engine, job_id, attempt=1) is None  # not running any more
    assert claim_job(engine, job_id, "worker-b") and get_job(engine, job_id).attempt == 2


def test_three_releases_then_lost_workers_still_get_every_attempt(engine, project_id):
    job_id = running_job(engine, project_id)
    for attempt in (1, 2, 3):
        assert release_job(engine, job_id, attempt=attempt) == "queued"
        assert claim_job(engine, job_id, f"worker-{attempt + 1}")
    job = get_job(engine, job_id)
    assert (job.attempt, job.max_attempts) == (4, 6)  # three shutdowns, three attempts left to lose


def test_release_of_a_job_whose_cancel_was_requested_cancels_it(engine, project_id):
    job_id = running_job(engine, project_id)
    assert request_cancel(engine, job_id) == "running"
    assert release_job(engine, job_id, attempt=1) == "cancelled"
    job = get_job(engine, job_id)
    assert job.state == "cancelled" and job.finished_at is not None and "shutting down" in job.error


def test_a_child_stopped_by_sigterm_leaves_its_job_queued(engine, project_id, tmp_path, monkeypatch):
    job_id = running_job(engine, project_id)
    monkeypatch.setattr(tasks, "job_command", lambda job, gpus: [
        sys.executable, "-c", "import os, signal; print('training', flush=True); os.kill(os.getpid(), signal.SIGTERM)"])
    code = tasks.run_child(settings_for(engine, tmp_path), job_id, attempt=1, gpus=1)
    assert code == -15
    job = get_job(engine, job_id)
    assert (job.state, job.error, job.enqueued_at) == ("queued", "", None)


def test_the_worker_s_shutdown_stops_its_child_and_any_exit_then_leaves_the_job_queued(
        engine, project_id, tmp_path, monkeypatch):
    job_id = running_job(engine, project_id)
    ready = tmp_path / "ready"
    # Like torchrun, the child handles SIGTERM and exits 1, not -15.
    monkeypatch.setattr(tasks, "job_command", lambda job, gpus: [sys.executable, "-c", (
        "import signal, sys, time, pathlib; signal.signal(signal.SIGTERM, lambda *_: sys.exit(1)); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(120)")])
    monkeypatch.setattr(tasks, "_shutting_down", type(tasks._shutting_down)())

    def shut_down_once_the_child_runs() -> None:
        wait_until(ready.exists, "the child started", timeout_s=work_deadline_s(5), evidence=lambda: "")
        tasks._note_shutdown(sig="SIGTERM", how="Warm", exitcode=0)  # what Celery's SIGTERM handler sends
    stopper = threading.Thread(target=shut_down_once_the_child_runs)
    stopper.start()
    started = time.monotonic()
    assert tasks.run_child(settings_for(engine, tmp_path), job_id, attempt=1, gpus=2) == 1
    stopper.join()
    assert time.monotonic() - started < 100  # stopped, not slept out
    assert get_job(engine, job_id).state == "queued"


def test_a_child_started_during_the_shutdown_is_stopped_at_once(engine, project_id, tmp_path, monkeypatch):
    job_id = running_job(engine, project_id)
    monkeypatch.setattr(tasks, "job_command", lambda job, gpus: [sys.executable, "-c", "import time; time.sleep(120)"])
    monkeypatch.setattr(tasks, "_shutting_down", type(tasks._shutting_down)())
    tasks._note_shutdown(sig="SIGTERM", how="Warm", exitcode=0)
    assert tasks.run_child(settings_for(engine, tmp_path), job_id, attempt=1, gpus=1) == -15
    assert get_job(engine, job_id).state == "queued"


def test_a_child_that_crashes_on_its_own_fails_the_job_with_its_log(engine, project_id, tmp_path, monkeypatch):
    job_id = running_job(engine, project_id)
    monkeypatch.setattr(tasks, "job_command", lambda job, gpus: [
        sys.executable, "-c", "print('loading weights'); raise SystemExit('CUDA out of memory')"])
    assert tasks.run_child(settings_for(engine, tmp_path), job_id, attempt=1, gpus=1) == 1
    job = get_job(engine, job_id)
    assert job.state == "failed" and job.error.startswith("training process exited with code 1")
    assert "CUDA out of memory" in job.error and "loading weights" in job.error
