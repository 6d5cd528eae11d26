"""A fine-tune job's life in its row: submit, claim, beat, cancel, finish, release, record the adapter
(architecture.md, "Job states").

    queued -> running -> succeeded | failed | cancelled
    running -> queued   only by the sweeps of lost workers (sweep.py) or a shutdown (release_job)

Every transition is ONE guarded `UPDATE job SET ... WHERE id = ? AND state = ?`
whose rowcount says whether it happened, so a duplicate broker delivery, two
workers, or a sweep racing a heartbeat can never both win: the row, not the
broker, is the source of truth (reliability.md, "Jobs"; celery #5935).

`attempt` counts claims: `claim_job` adds 1, the sweep keeps it; a job fails when its
worker is lost during attempt max_attempts (a shutdown's `release_job` grants one more
attempt: max_attempts + 1). Functions a worker
calls after its claim (`beat`, `finish_job`, `set_checkpoint`) take an optional
`attempt`; given, the UPDATE also requires `attempt = ?`, so a worker that was
presumed dead and whose job was re-claimed by another can no longer touch it.

Times are Python UTC (`utcnow`), written by whichever host acts; hosts must keep
their clocks in step (NTP) to well under the sweep's `stale_after_s`.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, Callable

from sqlalchemy import Engine, or_, true, update
from sqlmodel import select

from app.store.db import read_session, write_session
from app.store.models import Adapter, Job, Project, utcnow

logger = logging.getLogger(__name__)

ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("succeeded", "failed", "cancelled")

SendJob = Callable[[int], None]
"""Hands job `job_id` to the broker (e.g. `partial(send_train, celery_app)`); raises if it cannot."""


class JobError(ValueError):
    """A job request the store refuses; the message names the job or project and what to do."""


def guarded_update(engine: Engine, job_id: int, conditions: list, values: dict[str, Any]) -> bool:
    """`UPDATE job SET values WHERE id = job_id AND conditions...` in its own write transaction.

    Returns True when the row matched (rowcount 1), False when a guard did not hold.
    """
    with write_session(engine) as session:
        result = session.execute(update(Job).where(Job.id == job_id, *conditions).values(**values))
        return result.rowcount == 1


def _attempt_guard(attempt: int | None) -> list:
    return [] if attempt is None else [Job.attempt == attempt]


def _config_json(config: dict) -> str:
    if not isinstance(config, dict):
        raise JobError(f"job config must be a dict, got {type(config).__name__}")
    try:
        return json.dumps(config, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise JobError(f"job config cannot be stored as JSON: {error}") from None


def _snapshot_json(snapshot: list) -> str:
    """[[annotation_id, revision], ...] -> JSON; refuses an empty dataset, bad pairs and repeats."""
    if not snapshot:
        raise JobError("the dataset snapshot is empty: label at least one object before starting a fine-tune")
    pairs: list[list[int]] = []
    seen: set[int] = set()
    for index, item in enumerate(snapshot):
        if (not isinstance(item, (list, tuple)) or len(item) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)):
            raise JobError(f"dataset snapshot item {index} ({item!r}) must be [annotation_id, revision] integers")
        if item[0] in seen:
            raise JobError(f"dataset snapshot lists annotation {item[0]} twice")
        seen.add(item[0])
        pairs.append([item[0], item[1]])
    return json.dumps(pairs)


def create_job(engine: Engine, project_id: int, config: dict, snapshot: list) -> Job:
    """Insert a `queued` fine-tune job (enqueued_at NULL) with its frozen config and dataset snapshot.

    Refused (JobError) when the project does not exist or already has a queued or running
    job (insert_job).
    """
    return insert_job(engine, project_id, "train", _config_json(config), _snapshot_json(snapshot))


def insert_job(engine: Engine, project_id: int, kind: str, config_json: str, snapshot_json: str) -> Job:
    """Insert a `queued` job of `kind` (train | prelabel) unless the project has an active one.

    The check and the insert share one write transaction that first locks the
    project row (BEGIN IMMEDIATE on SQLite; SELECT ... FOR UPDATE on PostgreSQL, where
    READ COMMITTED alone would let two clicks both read "no active job"), so two clicks
    cannot both pass it. One active job per project: a pre-label run and a fine-tune never
    read and write the same labels at once.
    """
    with write_session(engine) as session:
        if session.exec(select(Project.id).where(Project.id == project_id).with_for_update()).first() is None:
            raise JobError(f"project {project_id} does not exist")
        active = session.exec(
            select(Job).where(Job.project_id == project_id, Job.state.in_(ACTIVE_STATES))
        ).first()
        if active is not None:
            raise JobError(
                f"project {project_id} already has job {active.id} ({active.state}); "
                "cancel it or wait for it to finish before starting another"
            )
        job = Job(project_id=project_id, kind=kind, config_json=config_json, dataset_snapshot=snapshot_json)
        session.add(job)
        session.flush()
    return job


def enqueue(engine: Engine, job_id: int, send: SendJob, resend_before: datetime | None = None) -> bool:
    """Hand a queued job to the broker at most once per caller race; True when sent.

    Reserve first (stamp enqueued_at, guarded: still queued and enqueued_at NULL, or older
    than `resend_before`), then send; if sending raises (broker down) the stamp is undone
    so the job reads "queued, waiting for the queue" and the next sweep retries. Two
    sweepers racing on one job: only the one whose reservation matched sends.
    """
    due = Job.enqueued_at.is_(None)
    if resend_before is not None:
        due = or_(due, Job.enqueued_at < resend_before)
    stamp = utcnow()
    if not guarded_update(engine, job_id, [Job.state == "queued", due], {"enqueued_at": stamp}):
        return False
    try:
        send(job_id)
    except Exception as error:  # any failure to hand over the message leaves the job to the sweep
        logger.warning("job %d stays queued, not handed to the broker: %s", job_id, error)
        guarded_update(engine, job_id, [Job.enqueued_at == stamp], {"enqueued_at": None})
        return False
    return True


def submit_job(engine: Engine, project_id: int, config: dict, snapshot: list, send: SendJob) -> Job:
    """Commit a new queued job, then send its message; returns the row as it stands after.

    Broker down: the job is still returned, queued with enqueued_at NULL (nothing lost;
    `enqueue_pending` sends it later). Refused like `create_job`.
    """
    job = create_job(engine, project_id, config, snapshot)
    enqueue(engine, job.id, send)
    return get_job(engine, job.id)


def claim_job(engine: Engine, job_id: int, worker_name: str) -> bool:
    """Compare-and-set queued -> running (started_at = heartbeat_at = now, attempt + 1, worker).

    False means another delivery already claimed it (or it was cancelled): the caller
    must exit without touching anything.
    """
    now = utcnow()
    return guarded_update(engine, job_id, [Job.state == "queued"], {
        "state": "running", "started_at": now, "heartbeat_at": now,
        "attempt": Job.attempt + 1, "worker": worker_name,
    })


def beat(engine: Engine, job_id: int, step: int, total_steps: int, attempt: int | None = None) -> bool:
    """Heartbeat + progress in one UPDATE; returns True when the training loop must stop.

    True means cancel was requested, or the job is no longer this worker's running job
    (swept and re-claimed, or already finished); the loop then ends and `finish_job`
    decides (its guard makes a lost job's finish a no-op).
    """
    statement = (
        update(Job)
        .where(Job.id == job_id, Job.state == "running", *_attempt_guard(attempt))
        .values(heartbeat_at=utcnow(), step=step, total_steps=total_steps)
        .returning(Job.cancel_requested)
    )
    with write_session(engine) as session:
        cancel_requested = session.execute(statement).scalar_one_or_none()
    return True if cancel_requested is None else bool(cancel_requested)


def request_cancel(engine: Engine, job_id: int) -> str:
    """Cancel a job: queued -> cancelled at once; running -> cancel_requested (the loop stops
    at its next step). Returns the state after the request; finished jobs are left as they are.
    """
    now = utcnow()
    with write_session(engine) as session:
        queued = session.execute(update(Job).where(Job.id == job_id, Job.state == "queued")
                                 .values(state="cancelled", finished_at=now))
        if queued.rowcount == 1:
            return "cancelled"
        running = session.execute(update(Job).where(Job.id == job_id, Job.state == "running")
                                  .values(cancel_requested=True))
        if running.rowcount == 1:
            return "running"
        job = session.get(Job, job_id)
        if job is None:
            raise JobError(f"job {job_id} does not exist")
        return job.state


def finish_job(engine: Engine, job_id: int, state: str, error: str = "", attempt: int | None = None) -> bool:
    """Guarded running -> succeeded | failed | cancelled with finished_at and a readable error.

    False when the job was not running (already finished, swept, or re-claimed).
    """
    if state not in FINAL_STATES:
        raise JobError(f"job {job_id} cannot finish as {state!r}; expected one of {', '.join(FINAL_STATES)}")
    now = utcnow()
    return guarded_update(engine, job_id, [Job.state == "running", *_attempt_guard(attempt)],
                          {"state": state, "error": error, "finished_at": now, "heartbeat_at": now})


def release_job(engine: Engine, job_id: int, attempt: int | None = None) -> str | None:
    """Guarded running -> queued (enqueued_at NULL) for a run stopped from outside: the worker
    or the studio shutting down (SIGTERM). A sweep sends it again and it resumes from its
    last checkpoint. A shutdown is not the job's failure, so it does not spend an attempt:
    max_attempts grows by one with the release (attempt itself only ever grows, so a
    runner's `attempt` guard keeps telling its claim from the next one). A job whose
    cancel was requested becomes cancelled instead. Returns the new state, or None when
    the job was not this attempt's running job.
    """
    guard = [Job.state == "running", *_attempt_guard(attempt)]
    now = utcnow()
    if guarded_update(engine, job_id, [*guard, Job.cancel_requested == true()],
                      {"state": "cancelled", "finished_at": now, "error": "cancelled; stopped while shutting down"}):
        return "cancelled"
    if guarded_update(engine, job_id, guard, {"state": "queued", "enqueued_at": None, "worker": "",
                                              "max_attempts": Job.max_attempts + 1}):
        return "queued"
    return None


def set_checkpoint(engine: Engine, job_id: int, path: str, attempt: int | None = None) -> bool:
    """Record the last complete checkpoint of a running job (a resume starts from it)."""
    return guarded_update(engine, job_id, [Job.state == "running", *_attempt_guard(attempt)],
                          {"checkpoint_path": path})


def get_job(engine: Engine, job_id: int) -> Job | None:
    with read_session(engine) as session:
        return session.get(Job, job_id)


def list_jobs(engine: Engine, project_id: int) -> list[Job]:
    """The project's jobs, newest first."""
    with read_session(engine) as session:
        return list(session.exec(select(Job).where(Job.project_id == project_id).order_by(Job.id.desc())))


def record_adapter(engine: Engine, project_id: int, job_id: int | None, name: str, path: str,
                   base_model: str = "", metrics: dict | None = None) -> Adapter:
    """Insert the Adapter row of a finished PEFT folder; `path` is relative to the media folder."""
    relative = PurePosixPath(path)
    if not path or relative.is_absolute() or ".." in relative.parts:
        raise JobError(f"adapter {name!r}: path {path!r} must be relative to the media folder, without '..'")
    try:
        metrics_json = json.dumps(metrics or {}, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise JobError(f"adapter {name!r}: metrics cannot be stored as JSON: {error}") from None
    adapter = Adapter(project_id=project_id, job_id=job_id, name=name, path=path,
                      base_model=base_model, metrics_json=metrics_json)
    with write_session(engine) as session:
        session.add(adapter)
        session.flush()
    return adapter
