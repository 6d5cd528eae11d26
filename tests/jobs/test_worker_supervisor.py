"""The supervisor of the embedded worker with real child processes standing in for the worker
(a `python -c` that exits or sleeps): restart with back-off, reaping, give up, the state in
words for the banner; and the studio's sweep thread honouring JOB_STALE_AFTER_S."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from app.jobs.embedded_worker import start_background_services, stop_worker
from app.jobs.lifecycle import claim_job, create_job, get_job
from app.jobs.worker_supervisor import WorkerSupervisor, exit_text
from app.settings import Settings
from tests.jobs.conftest import CONFIG, SNAPSHOT, new_store
from tests.jobs.process_tree import alive, exists
from tests.waiting import wait_until, work_deadline_s


class FakeWorkers:
    """launch(node): a `python -c <code>` child; remembers every process and node it started."""

    def __init__(self, code: str):
        self.code, self.processes, self.nodes = code, [], []

    def __call__(self, node: str) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", self.code], start_new_session=True)
        self.processes.append(process)
        self.nodes.append(node)
        return process


def supervise(workers: FakeWorkers, lost: list, **options) -> WorkerSupervisor:
    return WorkerSupervisor(launch=workers, stop=lambda process: stop_worker(process, timeout=5),
                            on_lost=lost.append, **options).start()


def test_a_worker_that_keeps_failing_is_restarted_with_back_off_then_given_up():
    workers, lost = FakeWorkers("raise SystemExit(3)"), []
    supervisor = supervise(workers, lost, restart_delays_s=(0.2, 0.4), give_up_after=3)
    try:
        state = wait_until(lambda: (state := supervisor.state()).phase == "given_up" and state,
                           "the supervisor gave up", work_deadline_s(5), lambda: str(supervisor.state()))
        assert (state.exits_in_a_row, state.last_exit) == (3, 3)
        assert len(workers.processes) == 3 and all(process.returncode == 3 for process in workers.processes)
        assert lost == workers.nodes and len(set(lost)) == 3  # each start has a node name of its own
        assert "gave up after 3 exits in a row (last: exit code 3)" in supervisor.describe()
    finally:
        supervisor.close(timeout_s=10)


def test_a_killed_worker_is_reaped_and_replaced_and_close_stops_the_new_one():
    workers, lost = FakeWorkers("import time; time.sleep(600)"), []
    supervisor = supervise(workers, lost, restart_delays_s=(0.5,))
    try:
        first = wait_until(lambda: supervisor.process, "a worker runs", work_deadline_s(3), lambda: "")
        assert supervisor.describe() == "Worker: running."
        first.send_signal(signal.SIGKILL)
        wait_until(lambda: supervisor.state().phase == "restarting", "the supervisor saw the exit",
                   work_deadline_s(2), lambda: str(supervisor.state()))
        assert "killed by SIGKILL; restarting in" in supervisor.describe()
        assert not exists(first.pid)  # reaped: no zombie left
        second = wait_until(lambda: (process := supervisor.process) is not first and process, "a new worker runs",
                            work_deadline_s(3), lambda: str(supervisor.state()))
        assert lost == workers.nodes[:1]
    finally:
        supervisor.close(timeout_s=10)
    assert not alive(second.pid) and supervisor.state().phase == "stopped"
    assert len(workers.processes) == 2 and lost == workers.nodes[:1]  # stopping is not a loss


def test_exit_text_names_the_signal():
    assert (exit_text(-9), exit_text(1), exit_text(-99)) == ("killed by SIGKILL", "exit code 1", "killed by signal 99")


def test_the_studio_sweep_requeues_a_job_once_its_heartbeat_is_older_than_job_stale_after_s(tmp_path):
    engine, project_id = new_store(tmp_path / "data")
    settings = Settings(DATA_DIR=tmp_path / "data", DATABASE_URL=str(engine.url), REDIS_URL="", JOB_STALE_AFTER_S=2)
    job = create_job(engine, project_id, CONFIG, SNAPSHOT)
    assert claim_job(engine, job.id, "ghost@gone")  # a worker that will never beat
    claimed_at = time.monotonic()
    services = start_background_services(settings, engine, with_worker=False)  # sweeps every 0.5 s
    try:
        requeued = wait_until(lambda: (row := get_job(engine, job.id)).state == "queued" and row.enqueued_at and row,
                              "the studio's sweep re-queued and sent the job", work_deadline_s(2 + 2),
                              lambda: str(get_job(engine, job.id)))
        assert time.monotonic() - claimed_at >= 2  # not before its heartbeat was JOB_STALE_AFTER_S old
        assert requeued.attempt == 1 and services.worker_status() == ""
    finally:
        services.stop()
        engine.dispose()
