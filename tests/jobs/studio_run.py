"""A real `sam3-studio --with-worker` process on a project of the tiny synthetic set, for the
job tests that stop, kill and restart the studio (test_embedded_worker_lives.py, test_lost_message.py)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from sqlmodel import select

from app.jobs.lifecycle import submit_job
from app.store.db import read_session
from app.store.models import Job
from tests.jobs.process_tree import child_pids
from tests.jobs.test_train_task import job_config, job_deadline_s, new_project, sender
from tests.ui.studio_process import start_studio, stop
from tests.waiting import job_rows, log_tails, wait_until, work_deadline_s


class StudioRun:
    """One project in tmp_path/data and the studios started on it, with the evidence of a failed wait."""

    def __init__(self, tmp_path: Path, tiny_model_dir: Path, **env: str):
        """`env`: the studio's environment variables beyond DATA_DIR and SAM3_MODEL (REDIS_URL, JOB_STALE_AFTER_S...)."""
        self.tmp_path, self.tiny_model_dir, self.env = tmp_path, tiny_model_dir, env
        self.studio = self.start()  # first: it creates and migrates the database
        self.settings, self.engine, self.project_id, self.snapshot = new_project(tmp_path / "data",
                                                                                 tmp_path / "synthetic")

    def start(self) -> subprocess.Popen:
        process, _ = start_studio(self.tmp_path, worker=True, SAM3_MODEL=str(self.tiny_model_dir), **self.env)
        return process

    def submit(self, max_steps: int, checkpoint_every: int) -> Job:
        return submit_job(self.engine, self.project_id, job_config(self.tiny_model_dir, max_steps, checkpoint_every),
                          self.snapshot, sender(self.settings, self.env.get("REDIS_URL", "")))

    def worker_pid(self) -> int:
        return wait_until(lambda: (pids := child_pids(self.studio.pid)) and pids[0], "the studio runs a worker",
                          work_deadline_s(10), self.evidence)

    def wait(self, condition, what: str, timeout_s: float | None = None):
        return wait_until(condition, what, job_deadline_s(60) if timeout_s is None else timeout_s, self.evidence)

    def evidence(self) -> str:
        data = self.tmp_path / "data"
        logs = sorted(self.tmp_path.glob("studio-*.log")) + [data / "logs" / "worker.log"] + sorted(data.glob("jobs/*/*.log"))
        with read_session(self.engine) as session:
            job_ids = list(session.exec(select(Job.id)))
        return f"{job_rows(self.engine, job_ids)}\n{log_tails(logs)}"

    def close(self) -> None:
        if self.studio.poll() is None:
            stop(self.studio)
        self.engine.dispose()
