"""The sweeps that make the job row, not the broker, the source of truth.

`enqueue_pending`: queued jobs whose message never reached the broker (broker down at
submit: enqueued_at NULL) or whose message was lost (sent RESEND_AFTER_S ago and still
not claimed) are sent again.

`sweep_stale_jobs`: a running job whose heartbeat is older than `stale_after_s`
(settings.JOB_STALE_AFTER_S) lost its worker (kill -9, OOM, host gone). It goes back to
queued (attempt kept; the next claim resumes from checkpoint_path) and is sent again; once
attempt >= max_attempts it fails with the reason. A stale job whose cancel was requested becomes cancelled.

`run_sweeps` runs both once: every worker as it starts (worker/tasks.py) and `sam3-studio`
every SWEEP_INTERVAL_S (`start_sweeper`, a daemon thread).

Both are safe to run from several processes at once: every change is a guarded UPDATE
(lifecycle.guarded_update / lifecycle.enqueue) and a duplicate message is a no-op at claim_job.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy import Engine, or_
from sqlmodel import select

from app.jobs.lifecycle import SendJob, enqueue, guarded_update
from app.store.db import read_session
from app.store.models import Job, utcnow

logger = logging.getLogger(__name__)

# A message can be lost without an error at send time: Redis restarted without
# persistence, the embedded broker file removed, or a worker killed after it took the
# message but before claim_job (the SQLAlchemy transport has no visibility timeout, and
# Redis only redelivers after ours, 24 h). 30 min is long against a lost message and
# short against the user's wait; re-sending a job that is merely waiting behind a
# long run costs one extra message, which claim_job turns into a no-op.
RESEND_AFTER_S = 30 * 60
SWEEP_INTERVAL_S = 30.0


def enqueue_pending(engine: Engine, send: SendJob, resend_after_s: float = RESEND_AFTER_S) -> list[int]:
    """Send every queued job that is not in the broker (enqueued_at NULL) or whose message
    is presumed lost (enqueued_at older than resend_after_s); returns the ids sent, oldest first.
    """
    resend_before = utcnow() - timedelta(seconds=resend_after_s)
    with read_session(engine) as session:
        job_ids = session.exec(
            select(Job.id)
            .where(Job.state == "queued", or_(Job.enqueued_at.is_(None), Job.enqueued_at < resend_before))
            .order_by(Job.id)
        ).all()
    return [job_id for job_id in job_ids if enqueue(engine, job_id, send, resend_before=resend_before)]


def _lost_reason(job: Job) -> str:
    last = job.heartbeat_at.isoformat(sep=" ", timespec="seconds") if job.heartbeat_at else "never"
    return f"worker lost {job.attempt} times; last heartbeat at {last} UTC"


def sweep_stale_jobs(engine: Engine, stale_after_s: float, send: SendJob) -> list[tuple[int, str]]:
    """Re-queue (and re-send) or fail each running job whose heartbeat is older than stale_after_s.

    Returns [(job_id, new_state), ...] for the jobs this call changed: "queued" (re-sent,
    or left for enqueue_pending if the broker is down), "failed" (attempt >= max_attempts,
    error "worker lost N times; last heartbeat at ..."), or "cancelled" (cancel was requested).
    The UPDATE re-checks state, attempt and staleness, so a worker that beats just in time keeps its job.
    """
    stale_before: datetime = utcnow() - timedelta(seconds=stale_after_s)
    is_stale = or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before)
    with read_session(engine) as session:
        stale_jobs = session.exec(select(Job).where(Job.state == "running", is_stale).order_by(Job.id)).all()
    changed: list[tuple[int, str]] = []
    for job in stale_jobs:
        guard = [Job.state == "running", Job.attempt == job.attempt, is_stale]
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


def run_sweeps(engine: Engine, send: SendJob, stale_after_s: float) -> tuple[list[tuple[int, str]], list[int]]:
    """One pass: re-queue lost jobs, then send every queued job the broker does not hold.
    Returns (sweep_stale_jobs' changes, the ids enqueue_pending sent)."""
    changed = sweep_stale_jobs(engine, stale_after_s, send)
    sent = enqueue_pending(engine, send)
    if changed or sent:
        logger.info("job sweep: stale %s, sent %s", changed, sent)
    return changed, sent


def _sweep_forever(engine: Engine, send: SendJob, stopping: threading.Event, interval_s: float,
                   stale_after_s: float) -> None:
    while not stopping.wait(interval_s):
        try:
            run_sweeps(engine, send, stale_after_s)
        except Exception:  # a DB or broker blip: the next pass retries
            logger.exception("job sweep failed")


def start_sweeper(engine: Engine, send: SendJob, stopping: threading.Event, stale_after_s: float,
                  interval_s: float = SWEEP_INTERVAL_S) -> threading.Thread:
    """A daemon thread running `run_sweeps` every `interval_s` until `stopping` is set."""
    sweeper = threading.Thread(target=_sweep_forever, args=(engine, send, stopping, interval_s, stale_after_s),
                               name="job-sweep", daemon=True)
    sweeper.start()
    return sweeper
