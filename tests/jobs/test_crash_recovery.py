"""Jobs survive worker deaths and duplicate deliveries (reliability.md, "Jobs"), with real
worker processes, real brokers and the tiny SAM3.

- kill -9 of the worker mid-run (a checkpoint exists): its training child dies with it
  (PR_SET_PDEATHSIG), a new worker's start sweep re-queues the stale job, the job resumes
  after the checkpoint, keeps the rows before it, and records exactly one adapter.
- Redis visibility timeout far shorter than the run, two workers: the second delivery is
  a no-op at claim_job: one run, one adapter.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from app.jobs.embedded_worker import stop_worker
from app.jobs.lifecycle import FINAL_STATES, submit_job
from app.jobs.metrics import read_metrics
from tests.jobs.test_train_task import (adapters_of, job_config, job_row, launch_worker, new_project, own_redis_db,
                                        sender, wait_for)
from tests.jobs.process_tree import alive, child_pids
from tests.waiting import work_deadline_s

STALE_AFTER_S = "3"  # the new worker's start sweep treats a 3 s old heartbeat as a lost worker


@pytest.mark.parametrize("broker", ["redis", "embedded"])
def test_a_killed_worker_s_job_resumes_from_its_checkpoint(broker, request, tmp_path, tiny_model_dir):
    settings, engine, project_id, snapshot = new_project(tmp_path / "data", tmp_path / "synthetic")
    redis_url = own_redis_db(request.getfixturevalue("redis_url")) if broker == "redis" else ""
    first = launch_worker(settings, redis_url, name="first", JOB_STALE_AFTER_S=STALE_AFTER_S)
    second = None
    try:
        job = submit_job(engine, project_id, job_config(tiny_model_dir, max_steps=30, checkpoint_every=5),
                         snapshot, sender(settings, redis_url))
        wait_for(lambda: job_row(engine, job.id).checkpoint_path, settings, f"job {job.id} saved no checkpoint")
        wait_for(lambda: job_row(engine, job.id).step >= 7, settings, f"job {job.id} did not pass step 7")
        children = child_pids(first.pid)
        assert children, "the worker runs the job in a child process"
        os.kill(first.pid, signal.SIGKILL)  # the worker only: its child must die with it
        first.wait(timeout=10)
        wait_for(lambda: not any(alive(pid) for pid in children), settings, "the training child outlived its worker",
                 timeout_s=work_deadline_s(3))
        killed = job_row(engine, job.id)
        assert killed.state == "running" and killed.step < 30
        checkpoint_step = int(killed.checkpoint_path.rsplit("step", 1)[1].split(".")[0])
        rows_before = {(r.id, r.step, r.name) for r in read_metrics(engine, job.id) if r.step <= checkpoint_step}
        time.sleep(float(STALE_AFTER_S) + 0.5)  # let the heartbeat go stale
        second = launch_worker(settings, redis_url, name="second", JOB_STALE_AFTER_S=STALE_AFTER_S)
        done = wait_for(lambda: (row := job_row(engine, job.id)).state in FINAL_STATES and row, settings,
                        f"job {job.id} did not finish after the restart")
        assert (done.state, done.attempt, done.step) == ("succeeded", 2, 30)
        rows = read_metrics(engine, job.id)
        assert rows_before <= {(r.id, r.step, r.name) for r in rows}  # rows up to the checkpoint are kept
        train_steps = [r.step for r in rows if r.name == "loss" and r.split == "train"]
        assert sorted(train_steps) == list(range(1, 31))  # each step once: rows after the checkpoint rewritten
        resumed_ids = [r.id for r in rows if r.name == "loss" and r.step == checkpoint_step + 1]
        assert resumed_ids[0] > max(row_id for row_id, _, _ in rows_before)  # written by the second run
        assert len(adapters_of(engine, job.id)) == 1
        log = (settings.DATA_DIR / "jobs" / str(job.id) / "attempt-2.log").read_text()
        assert "resumed from" in log and f"step {checkpoint_step}" in log
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_worker(proc, timeout=15)
        engine.dispose()


def test_a_redelivery_after_the_visibility_timeout_runs_nothing_twice(redis_url, tmp_path, tiny_model_dir):
    settings, engine, project_id, snapshot = new_project(tmp_path / "data", tmp_path / "synthetic")
    url = own_redis_db(redis_url)
    workers = [launch_worker(settings, url, name=f"worker-{i}", CELERY_VISIBILITY_TIMEOUT_S="2") for i in range(2)]
    try:
        job = submit_job(engine, project_id, job_config(tiny_model_dir, max_steps=40, checkpoint_every=0),
                         snapshot, sender(settings, url))
        done = wait_for(lambda: (row := job_row(engine, job.id)).state in FINAL_STATES and row, settings,
                        f"job {job.id} did not finish")
        assert (done.state, done.attempt) == ("succeeded", 1)
        assert len(adapters_of(engine, job.id)) == 1
        assert sorted(r.step for r in read_metrics(engine, job.id) if r.name == "loss" and r.split == "train") \
            == list(range(1, 41))
        worker_logs = "".join((settings.DATA_DIR / f"worker-{i}.log").read_text() for i in range(2))
        assert "duplicate delivery" in worker_logs  # the timeout did fire a second copy, and it was refused
        assert not list(settings.DATA_DIR.glob("jobs/*/attempt-2.log"))
    finally:
        for proc in workers:
            stop_worker(proc, timeout=15)
        engine.dispose()
