"""The sweeps that make the job row, not the broker, the source of truth.

`enqueue_pending`: a queued job whose message never reached the broker (broker down at
submit, or released by a shutdown: enqueued_at NULL) is sent; so is one whose message
was lost: sent more than LOST_MESSAGE_AFTER_S ago, still unclaimed, and the train queue
is empty, so the message cannot be in the broker (Redis restarted without persistence,
the embedded broker file removed, a worker killed after it took the message but before
claim_job; the SQLAlchemy transport has no visibility timeout and Redis re-delivers only
after ours, 24 h).

`sweep_stale_jobs`: a running job whose heartbeat is older than `stale_after_s`
(settings.JOB_STALE_AFTER_S) lost its worker (kill -9, OOM, host gone).
`requeue_jobs_of_worker`: the same at once for the jobs of a worker known to be dead
(the studio reaped its embedded worker). Either way the job goes back to queued (attempt
kept; the next claim resumes from checkpoint_path) and is sent again; once attempt >=
max_attempts it fails with the reason. A lost job whose cancel was requested becomes cancelled.

`run_sweeps` runs the stale sweep and enqueue_pending once: every worker as it starts
(worker/tasks.py) and `sam3-studio` every `sweep_interval_s(JOB_STALE_AFTER_S)`
(`start_sweeper`, a daemon thread).

All are safe to run from several processes at once: every change is a guarded UPDATE
(lifecycle.guarded_update / lifecycle.enqueue), and an extra copy of a message is a no-op
at claim_job, so a job never runs twice however often it is sent.
"""
from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Callable

from sqlalchemy import Engine, or_
from sqlmodel import select

from app.jobs.lifecycle import SendJob, enqueue, guarded_update
from app.store.db import read_session
from app.store.models import Job, utcnow

logger = logging.getLogger(__name__)

QueueDepth = Callable[[], int]
"""Messages waiting in the train queue (e.g. `partial(queue.queued_messages, celery_app)`); raises
when the broker does not answer."""

# A worker claims a job within moments of taking its message; a queued job sent longer ago
# than this, with an empty queue, has lost its message. Too short costs nothing but an extra
# message (claim_job refuses it); it only has to cover a slow claim on a busy machine.
LOST_MESSAGE_AFTER_S = 10.0
SWEEP_INTERVAL_S = 30.0
MIN_SWEEP_INTERVAL_S = 0.5


def sweep_interval_s(stale_after_s: float) -> float:
    """How often sam3-studio sweeps: SWEEP_INTERVAL_S, or a quarter of stale_after_s when
    that is shorter (at least MIN_SWEEP_INTERVAL_S), so a lost job is re-queued at most
    a quarter of its staleness late."""
    return max(MIN_SWEEP_INTERVAL_S, min(SWEEP_INTERVAL_S, stale_after_s / 4))


def _queue_is_empty(queue_depth: QueueDepth) -> bool:
    try:
        return queue_depth() == 0
    except Exception as error:  # broker down: a send would fail too; the next pass retries
        logger.warning("cannot read the train queue: %s", error)
        return False


def enqueue_pending(engine: Engine, send: SendJob, queue_depth: QueueDepth | None = None,
                    lost_after_s: float = LOST_MESSAGE_AFTER_S) -> list[int]:
    """Send every queued job the broker cannot hold; returns the ids sent, oldest first.

    Always the jobs with enqueued_at NULL; with `queue_depth`, also those sent more than
    `lost_after_s` ago when queue_depth() is 0 (their message is lost, module docstring).
    """
    lost_before = utcnow() - timedelta(seconds=lost_after_s)
    with read_session(engine) as session:
        jobs = session.exec(
            select(Job.id, Job.enqueued_at)
            .where(Job.state == "queued", or_(Job.enqueued_at.is_(None), Job.enqueued_at < lost_before))
            .order_by(Job.id)
        ).all()
    unsent = [job_id for job_id, enqueued_at in jobs if enqueued_at is None]
    lost = [job_id for job_id, enqueued_at in jobs if enqueued_at is not None]
    if lost and (queue_depth is None or not _queue_is_empty(queue_depth)):
        lost = []
    sent = [job_id for job_id in unsent if enqueue(engine, job_id, send)]
    resent = [job_id for job_id in lost if enqueue(engine, job_id, send, resend_before=lost_before)]
    if resent:
        logger.warning("jobs %s were queued but the broker held no message for them: sent again", resent)
    return sorted(sent + resent)


def _lost_reason(job: Job) -> str:
    last = job.heartbeat_at.isoformat(sep=" ", timespec="seconds") if job.heartbeat_at else "never"
    return f"worker lost during attempt {job.attempt} of {job.max_attempts}; last heartbeat at {last} UTC"


def _requeue_lost_jobs(engine: Engine, lost: list, send: SendJob) -> list[tuple[int, str]]:
    """Re-queue (and re-send), fail or cancel each running job matching the conditions `lost`;
    each UPDATE re-checks them with the state and attempt, so a job that moved on is left alone."""
    with read_session(engine) as session:
        jobs = session.exec(select(Job).where(Job.state == "running", *lost).order_by(Job.id)).all()
    changed: list[tuple[int, str]] = []
    for job in jobs:
        guard = [Job.state == "running", Job.attempt == job.attempt, *lost]
        now = utcnow()
        if job.cancel_requested:
            new_state, values = "cancelled", {"finished_at": now, "error": f"cancelled; {_lost_reason(job)}"}
        elif job.attempt >= job.max_attempts:
            new_state, values = "failed", {"finished_at": now, "error": _lost_reason(job)}
        else:
            new_state, values = "queued", {"enqueued_at": None}
        if not guarded_update(engine, job.id, guard, {"state": new_state, **values}):
            continue
        changed.append((job.id, new_state))
        if new_state == "queued":
            enqueue(engine, job.id, send)
    return changed


def sweep_stale_jobs(engine: Engine, stale_after_s: float, send: SendJob) -> list[tuple[int, str]]:
    """Re-queue (and re-send) or fail each running job whose heartbeat is older than stale_after_s.

    Returns [(job_id, new_state), ...] for the jobs this call changed: "queued" (re-sent,
    or left for enqueue_pending if the broker is down), "failed" (attempt >= max_attempts,
    error "worker lost during attempt N of M; last heartbeat at ..."), or "cancelled" (cancel
    was requested). A worker that beats just in time keeps its job.
    """
    stale_before = utcnow() - timedelta(seconds=stale_after_s)
    return _requeue_lost_jobs(engine, [or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before)], send)


def requeue_jobs_of_worker(engine: Engine, worker_name: str, send: SendJob) -> list[tuple[int, str]]:
    """As sweep_stale_jobs, at once, for the running jobs claimed by `worker_name`: call it only
    once that worker is known dead (its process reaped) and its node name is never reused."""
    return _requeue_lost_jobs(engine, [Job.worker == worker_name], send)


def run_sweeps(engine: Engine, send: SendJob, stale_after_s: float,
               queue_depth: QueueDepth | None = None) -> tuple[list[tuple[int, str]], list[int]]:
    """One pass: re-queue lost jobs, then send every queued job the broker does not hold.
    Returns (sweep_stale_jobs' changes, the ids enqueue_pending sent)."""
    changed = sweep_stale_jobs(engine, stale_after_s, send)
    sent = enqueue_pending(engine, send, queue_depth)
    if changed or sent:
        logger.info("job sweep: stale %s, sent %s", changed, sent)
    return changed, sent


def _sweep_forever(engine: Engine, send: SendJob, queue_depth: QueueDepth | None, stopping: threading.Event,
                   interval_s: float, stale_after_s: float) -> None:
    while not stopping.wait(interval_s):
        try:
            run_sweeps(engine, send, stale_after_s, queue_depth)
        except Exception:  # a DB or broker blip: the next pass retries
            logger.exception("job sweep failed")


def start_sweeper(engine: Engine, send: SendJob, stopping: threading.Event, stale_after_s: float,
                  interval_s: float | None = None, queue_depth: QueueDepth | None = None) -> threading.Thread:
    """A daemon thread running `run_sweeps` every `interval_s` (default sweep_interval_s(stale_after_s))
    until `stopping` is set."""
    interval_s = sweep_interval_s(stale_after_s) if interval_s is None else interval_s
    sweeper = threading.Thread(target=_sweep_forever,
                               args=(engine, send, queue_depth, stopping, interval_s, stale_after_s),
                               name="job-sweep", daemon=True)
    sweeper.start()
    return sweeper
