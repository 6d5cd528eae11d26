"""The job state machine on a real SQLite file: every transition guarded, sweeps, broker down at submit."""
from __future__ import annotations

import uuid
from datetime import timedelta
from functools import partial

import pytest
import redis
from sqlalchemy import update

from app.jobs.lifecycle import (
    JobError, beat, claim_job, create_job, finish_job, get_job, list_jobs,
    record_adapter, request_cancel, set_checkpoint, submit_job,
)
from app.jobs.queue import make_celery, send_train
from app.jobs.sweep import enqueue_pending, requeue_jobs_of_worker, sweep_stale_jobs
from app.settings import Settings
from app.store.db import write_session
from app.store.models import Job, utcnow
from tests.jobs.conftest import CONFIG, SNAPSHOT, add_project
from tests.services import free_port


class RecordingSender:
    """A send function that records job ids (or raises, to play a down broker)."""

    def __init__(self, fail: bool = False):
        self.sent: list[int] = []
        self.fail = fail

    def __call__(self, job_id: int) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append(job_id)


def row(engine, job_id) -> dict:
    return get_job(engine, job_id).model_dump()


def age_heartbeat(engine, job_id, seconds: float) -> None:
    with write_session(engine) as session:
        session.execute(update(Job).where(Job.id == job_id)
                        .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def test_create_job_is_queued_with_frozen_inputs(engine, project_id):
    job = create_job(engine, project_id, CONFIG, SNAPSHOT)
    stored = get_job(engine, job.id)
    assert (stored.state, stored.enqueued_at, stored.attempt) == ("queued", None, 0)
    assert stored.config_json == '{"epochs": 1, "lr": 0.0001}'
    assert stored.dataset_snapshot == "[[1, 1], [2, 3]]"


@pytest.mark.parametrize("config, snapshot, message", [
    (CONFIG, [], "snapshot is empty"),
    (CONFIG, [[1, 1], [1, 2]], "annotation 1 twice"),
    (CONFIG, [[1, "2"]], "item 0"),
    ({"lr": float("nan")}, SNAPSHOT, "JSON"),
    ({"path": object()}, SNAPSHOT, "JSON"),
])
def test_create_job_refuses_bad_input(engine, project_id, config, snapshot, message):
    with pytest.raises(JobError, match=message):
        create_job(engine, project_id, config, snapshot)
    assert list_jobs(engine, project_id) == []


def test_create_job_refuses_unknown_project(engine):
    with pytest.raises(JobError, match="project 999 does not exist"):
        create_job(engine, 999, CONFIG, SNAPSHOT)


def test_submit_sends_and_stamps_enqueued_at(engine, project_id):
    sender = RecordingSender()
    job = submit_job(engine, project_id, CONFIG, SNAPSHOT, sender)
    assert sender.sent == [job.id]
    assert job.state == "queued" and job.enqueued_at is not None


def test_submit_refused_while_a_job_is_queued_or_running(engine, project_id):
    sender = RecordingSender()
    first = submit_job(engine, project_id, CONFIG, SNAPSHOT, sender)
    with pytest.raises(JobError, match=f"already has job {first.id} \\(queued\\)"):
        submit_job(engine, project_id, CONFIG, SNAPSHOT, sender)
    assert claim_job(engine, first.id, "w1")
    with pytest.raises(JobError, match=f"already has job {first.id} \\(running\\)"):
        submit_job(engine, project_id, CONFIG, SNAPSHOT, sender)
    assert finish_job(engine, first.id, "succeeded")
    second = submit_job(engine, project_id, CONFIG, SNAPSHOT, sender)
    assert sender.sent == [first.id, second.id]
    assert [job.id for job in list_jobs(engine, project_id)] == [second.id, first.id]


def test_second_claim_returns_false_and_changes_nothing(engine, project_id):
    job = create_job(engine, project_id, CONFIG, SNAPSHOT)
    assert claim_job(engine, job.id, "worker-a")
    claimed = row(engine, job.id)
    assert (claimed["state"], claimed["attempt"], claimed["worker"]) == ("running", 1, "worker-a")
    assert claimed["started_at"] is not None and claimed["heartbeat_at"] is not None
    assert not claim_job(engine, job.id, "worker-b")
    assert row(engine, job.id) == claimed


def test_cancel_of_a_queued_job_is_immediate(engine, project_id):
    job = create_job(engine, project_id, CONFIG, SNAPSHOT)
    assert request_cancel(engine, job.id) == "cancelled"
    cancelled = get_job(engine, job.id)
    assert cancelled.state == "cancelled" and cancelled.finished_at is not None
    assert not claim_job(engine, job.id, "late-worker")
    assert get_job(engine, job.id).state == "cancelled"


def test_cancel_of_a_running_job_is_cooperative(engine, project_id):
    job = create_job(engine, project_id, CONFIG, SNAPSHOT)
    assert claim_job(engine, job.id, "w1")
    assert beat(engine, job.id, step=1, total_steps=10) is False
    assert request_cancel(engine, job.id) == "running"
    assert beat(engine, job.id, step=2, total_steps=10) is True
    progressed = get_job(engine, job.id)
    assert (progressed.state, progressed.step, progressed.total_steps) == ("running", 2, 10)
    assert finish_job(engine, job.id, "cancelled")
    assert request_cancel(engine, job.id) == "cancelled"
    with pytest.raises(JobError, match="job 999 does not exist"):
        request_cancel(engine, 999)


def test_finish_only_from_running(engine, project_id):
    job = create_job(engine, project_id, CONFIG, SNAPSHOT)
    assert not finish_job(engine, job.id, "succeeded")
    assert get_job(engine, job.id).state == "queued"
    with pytest.raises(JobError, match="cannot finish as 'queued'"):
        finish_job(engine, job.id, "queued")
    assert claim_job(engine, job.id, "w1")
    assert finish_job(engine, job.id, "failed", error="non-finite loss_giou at step 7")
    assert not finish_job(engine, job.id, "succeeded")
    done = get_job(engine, job.id)
    assert (done.state, done.error) == ("failed", "non-finite loss_giou at step 7")
    assert beat(engine, job.id, step=8, total_steps=10) is True  # not running: the loop must stop
    assert get_job(engine, job.id).step == 0


def test_checkpoint_is_recorded_only_while_running(engine, project_id):
    job = create_job(engine, project_id, CONFIG, SNAPSHOT)
    assert not set_checkpoint(engine, job.id, "checkpoints/1/step-5.pt")
    assert claim_job(engine, job.id, "w1")
    assert set_checkpoint(engine, job.id, "checkpoints/1/step-5.pt")
    assert get_job(engine, job.id).checkpoint_path == "checkpoints/1/step-5.pt"


def test_sweep_leaves_a_job_with_a_fresh_heartbeat(engine, project_id):
    job = create_job(engine, project_id, CONFIG, SNAPSHOT)
    assert claim_job(engine, job.id, "w1")
    sender = RecordingSender()
    assert sweep_stale_jobs(engine, stale_after_s=60, send=sender) == []
    assert get_job(engine, job.id).state == "running" and sender.sent == []


def test_sweep_requeues_a_stale_job_then_fails_it_after_max_attempts(engine, project_id):
    job = create_job(engine, project_id, CONFIG, SNAPSHOT)
    sender = RecordingSender()
    for attempt in (1, 2):
        assert claim_job(engine, job.id, f"w{attempt}")
        assert set_checkpoint(engine, job.id, f"checkpoints/step-{attempt}.pt")
        age_heartbeat(engine, job.id, 120)
        assert sweep_stale_jobs(engine, stale_after_s=60, send=sender) == [(job.id, "queued")]
        requeued = get_job(engine, job.id)
        assert (requeued.state, requeued.attempt) == ("queued", attempt)
        assert requeued.checkpoint_path == f"checkpoints/step-{attempt}.pt"  # the next claim resumes here
        assert requeued.enqueued_at is not None
    assert sender.sent == [job.id, job.id]
    assert claim_job(engine, job.id, "w3")
    age_heartbeat(engine, job.id, 120)
    assert sweep_stale_jobs(engine, stale_after_s=60, send=sender) == [(job.id, "failed")]
    failed = get_job(engine, job.id)
    assert failed.state == "failed" and failed.attempt == 3
    assert failed.error.startswith("worker lost during attempt 3 of 3; last heartbeat at ")
    assert sender.sent == [job.id, job.id]


def test_a_worker_presumed_dead_cannot_touch_the_reclaimed_job(engine, project_id):
    job = create_job(engine, project_id, CONFIG, SNAPSHOT)
    assert claim_job(engine, job.id, "slow")
    age_heartbeat(engine, job.id, 120)
    sweep_stale_jobs(engine, stale_after_s=60, send=RecordingSender())
    assert claim_job(engine, job.id, "fresh")
    assert beat(engine, job.id, step=99, total_steps=100, attempt=1) is True
    assert not finish_job(engine, job.id, "succeeded", attempt=1)
    current = get_job(engine, job.id)
    assert (current.state, current.worker, current.attempt, current.step) == ("running", "fresh", 2, 0)
    assert beat(engine, job.id, step=3, total_steps=100, attempt=2) is False


def test_sweep_cancels_a_stale_job_whose_cancel_was_requested(engine, project_id):
    job = create_job(engine, project_id, CONFIG, SNAPSHOT)
    assert claim_job(engine, job.id, "w1")
    request_cancel(engine, job.id)
    age_heartbeat(engine, job.id, 120)
    sender = RecordingSender()
    assert sweep_stale_jobs(engine, stale_after_s=60, send=sender) == [(job.id, "cancelled")]
    assert get_job(engine, job.id).error.startswith("cancelled; worker lost during attempt 1 of 3")
    assert sender.sent == []


def test_a_down_sender_leaves_the_requeued_job_for_enqueue_pending(engine, project_id):
    job = create_job(engine, project_id, CONFIG, SNAPSHOT)
    assert claim_job(engine, job.id, "w1")
    age_heartbeat(engine, job.id, 120)
    assert sweep_stale_jobs(engine, stale_after_s=60, send=RecordingSender(fail=True)) == [(job.id, "queued")]
    assert get_job(engine, job.id).enqueued_at is None
    sender = RecordingSender()
    assert enqueue_pending(engine, sender) == [job.id] and sender.sent == [job.id]


def test_broker_down_at_submit_then_enqueue_pending_sends_once(engine, project_id, redis_url, tmp_path):
    closed_port = free_port()
    down = make_celery(Settings(REDIS_URL=f"redis://127.0.0.1:{closed_port}/0", DATA_DIR=tmp_path))
    job = submit_job(engine, project_id, CONFIG, SNAPSHOT, partial(send_train, down))
    assert (job.state, job.enqueued_at) == ("queued", None)
    assert get_job(engine, job.id).enqueued_at is None

    queue = f"test-pending-{uuid.uuid4().hex[:8]}"  # nobody consumes it: its length counts messages
    up = make_celery(Settings(REDIS_URL=redis_url, DATA_DIR=tmp_path), default_queue=queue)
    client = redis.Redis.from_url(redis_url)
    try:
        assert enqueue_pending(engine, partial(send_train, up)) == [job.id]
        assert get_job(engine, job.id).enqueued_at is not None
        assert enqueue_pending(engine, partial(send_train, up)) == []
        assert client.llen(queue) == 1
    finally:
        client.delete(queue)


def test_enqueue_pending_resends_a_message_only_when_the_queue_is_empty(engine, project_id):
    sender = RecordingSender()
    job = submit_job(engine, project_id, CONFIG, SNAPSHOT, sender)
    assert enqueue_pending(engine, sender, queue_depth=lambda: 0) == []  # sent just now: a worker may be claiming it
    assert enqueue_pending(engine, sender, queue_depth=lambda: 1, lost_after_s=0) == []  # may be the waiting one
    assert enqueue_pending(engine, sender, lost_after_s=0) == []  # the queue unknown: presumed there

    def broker_down() -> int:
        raise ConnectionError("broker down")
    assert enqueue_pending(engine, sender, queue_depth=broker_down, lost_after_s=0) == []
    assert enqueue_pending(engine, sender, queue_depth=lambda: 0, lost_after_s=0) == [job.id]  # lost: sent again
    assert claim_job(engine, job.id, "w1")
    assert enqueue_pending(engine, sender, queue_depth=lambda: 0, lost_after_s=0) == []  # claimed: nothing to resend
    assert sender.sent == [job.id, job.id]


def test_the_jobs_of_a_dead_worker_are_requeued_at_once(engine, project_id):
    ours = create_job(engine, project_id, CONFIG, SNAPSHOT)
    other = create_job(engine, add_project(engine, "other"), CONFIG, SNAPSHOT)
    assert claim_job(engine, ours.id, "studio-dead@host") and claim_job(engine, other.id, "studio-alive@host")
    sender = RecordingSender()
    assert requeue_jobs_of_worker(engine, "studio-dead@host", sender) == [(ours.id, "queued")]
    assert sender.sent == [ours.id]
    assert (get_job(engine, ours.id).state, get_job(engine, other.id).state) == ("queued", "running")
    assert requeue_jobs_of_worker(engine, "studio-dead@host", sender) == []  # once


def test_record_adapter(engine, project_id):
    job = create_job(engine, project_id, CONFIG, SNAPSHOT)
    adapter = record_adapter(engine, project_id, job.id, "cracks-v1", "adapters/1", "facebook/sam3",
                             {"segm_mAP": 0.41})
    assert adapter.id is not None and adapter.metrics_json == '{"segm_mAP": 0.41}'
    for bad_path in ("/etc/passwd", "adapters/../../etc", ""):
        with pytest.raises(JobError, match="must be relative to the media folder"):
            record_adapter(engine, project_id, job.id, "evil", bad_path)
