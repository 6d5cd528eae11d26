"""The healthchecks of docker-compose.yml, run as the containers run them.

- docker/app_health.py: exit 0 for a server answering 2xx, 1 (with the reason) for an
  HTTP error and for a closed port.
- docker/worker_health.py against a real worker process on Redis: healthy when idle (it
  answers the ping); healthy while a task holds its solo pool (no ping reply, but its job's
  heartbeat is fresh); unhealthy once that heartbeat is older than JOB_STALE_AFTER_S.
"""
from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from functools import partial

import pytest
from sqlmodel import SQLModel

from app.jobs.embedded_worker import start_worker, stop_worker
from app.jobs.lifecycle import create_job, get_job
from app.jobs.queue import make_celery, send_train
from app.settings import Settings
from app.store.db import make_engine
from tests.deploy.entry_points import REPO_ROOT
from tests.jobs.conftest import CONFIG, SNAPSHOT, add_project
from tests.jobs.slow_echo_tasks import SLOW_ECHO_TASK
from tests.services import free_port

PYTHONPATH = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
WAIT_S = 60


def run_script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "docker" / name), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": PYTHONPATH, **(env or {})})


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/" else 404)
        self.end_headers()

    def log_message(self, *_):
        pass


def test_app_health_answers_for_a_serving_app_only():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        assert run_script("app_health.py", f"http://127.0.0.1:{port}/").returncode == 0
        broken = run_script("app_health.py", f"http://127.0.0.1:{port}/missing")
        assert broken.returncode == 1 and "HTTP 404" in broken.stderr
    finally:
        server.shutdown()
        server.server_close()
    closed = run_script("app_health.py", env={"PORT": str(free_port())})  # the default URL, on a closed port
    assert closed.returncode == 1 and "did not answer" in closed.stderr


def _wait_for(condition, log_path, what: str):
    deadline = time.monotonic() + WAIT_S
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {WAIT_S} s; worker log:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    return value


def test_worker_health_counts_a_worker_busy_in_a_task_as_healthy(redis_url, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database_url = f"sqlite:///{data_dir / 'studio.db'}"
    engine = make_engine(database_url)
    SQLModel.metadata.create_all(engine)
    queue = f"test-health-{uuid.uuid4().hex[:8]}"
    env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url, "PYTHONPATH": PYTHONPATH,
           "CELERY_EXTRA_TASK_MODULES": "tests.jobs.slow_echo_tasks", "SLOW_ECHO_S": "60"}
    log_path = data_dir / "worker.log"
    worker = start_worker(env, data_dir, queues=queue, log_path=log_path)
    try:
        banner = _wait_for(lambda: log_path.exists() and " ready." in (text := log_path.read_text()) and text,
                           log_path, "the worker was not ready")
        node = re.search(r"(train-[0-9a-f]{8}@\S+)", banner).group(1)
        check = partial(run_script, "worker_health.py", node, env={**env, "JOB_STALE_AFTER_S": "300"})
        idle = check()
        assert idle.returncode == 0, idle.stderr

        sender_app = make_celery(Settings(DATA_DIR=data_dir, REDIS_URL=redis_url), default_queue=queue)
        job = create_job(engine, add_project(engine), CONFIG, SNAPSHOT)
        send_train(sender_app, job.id, task_name=SLOW_ECHO_TASK)
        _wait_for(lambda: get_job(engine, job.id).state == "running", log_path, f"job {job.id} was not claimed")
        busy = check()
        assert busy.returncode == 0, busy.stderr
        assert get_job(engine, job.id).worker == node  # the row the check relied on

        time.sleep(1.5)
        stale = run_script("worker_health.py", node, env={**env, "JOB_STALE_AFTER_S": "1"})
        assert stale.returncode == 1  # no ping reply while the task runs, and the heartbeat is now "old"
        assert f"{node} answers no ping and has no running job with a heartbeat in the last 1 s" in stale.stderr
    finally:
        stop_worker(worker, timeout=2)  # the 60 s task is cut short: SIGKILL after 2 s
        engine.dispose()
