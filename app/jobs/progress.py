"""How fast a running job steps, for its ETA: the first training metric row of the current
attempt gives (step0, time0), the job's heartbeat gives (step, time); rate = Δstep / Δtime.

Rows carry the time the worker recorded them (metrics.metric_values), so a resumed attempt
measures its own pace, not the gap since the first attempt.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Engine
from sqlmodel import select

from app.store.db import read_session
from app.store.models import Job, Metric


def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def first_train_row_since(engine: Engine, job_id: int, since: datetime) -> tuple[int, datetime] | None:
    """(step, recorded at) of the job's first training metric row recorded at or after `since`."""
    with read_session(engine) as session:
        row = session.exec(
            select(Metric.step, Metric.created_at)
            .where(Metric.job_id == job_id, Metric.split == "train", Metric.created_at >= since)
            .order_by(Metric.id).limit(1)
        ).first()
    return None if row is None else (row[0], as_utc(row[1]))


def steps_per_second(engine: Engine, job: Job) -> float | None:
    """The running attempt's pace: (job.step - step0) / (heartbeat_at - time0), or None when
    it cannot be told yet (no row since the claim, or no step or time elapsed since it)."""
    started, heartbeat = as_utc(job.started_at), as_utc(job.heartbeat_at)
    if job.state != "running" or started is None or heartbeat is None:
        return None
    anchor = first_train_row_since(engine, job.id, started)
    if anchor is None:
        return None
    step0, time0 = anchor
    elapsed = (heartbeat - time0).total_seconds()
    if job.step <= step0 or elapsed <= 0:
        return None
    return (job.step - step0) / elapsed
