"""Metric rows of a job: the worker appends, the UI polls (style.md 7: durable rows, not
shared memory). A row is one value of one curve at one step: (job, step, split, name) -> value.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from sqlalchemy import Engine, delete, insert
from sqlmodel import select

from app.store.db import read_session, write_session
from app.store.models import Metric, utcnow

logger = logging.getLogger(__name__)

METRIC_FIELDS = {"step", "epoch", "split", "name", "value"}
REQUIRED_FIELDS = {"step", "name", "value"}
SPLITS = ("train", "val")


def metric_values(job_id: int, row: dict[str, Any]) -> dict[str, Any]:
    """Check one metric dict {step, name, value[, epoch, split]} and return the column values.

    Refused: unknown or missing keys, a non-integer step, a non-finite value (SQLite
    would store NaN as NULL), a split other than train / val.
    """
    label = f"metric {row.get('name')!r} at step {row.get('step')!r} of job {job_id}"
    unknown, missing = set(row) - METRIC_FIELDS, REQUIRED_FIELDS - set(row)
    if unknown or missing:
        raise ValueError(f"{label}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    if not isinstance(row["step"], int) or isinstance(row["step"], bool) or row["step"] < 0:
        raise ValueError(f"{label}: step must be an integer >= 0")
    value = float(row["value"])
    if not math.isfinite(value):
        raise ValueError(f"{label}: value {value} is not finite")
    split = row.get("split", "train")
    if split not in SPLITS:
        raise ValueError(f"{label}: split {split!r} must be one of {', '.join(SPLITS)}")
    return {"job_id": job_id, "step": row["step"], "epoch": float(row.get("epoch", 0.0)), "split": split,
            "name": str(row["name"]), "value": value, "created_at": utcnow()}


def _insert(engine: Engine, values: list[dict[str, Any]]) -> None:
    if values:
        with write_session(engine) as session:
            session.execute(insert(Metric), values)


def read_metrics(engine: Engine, job_id: int, after_id: int = 0) -> list[Metric]:
    """Rows of the job with id > after_id in id order: the UI passes its last id for an incremental poll."""
    with read_session(engine) as session:
        return list(session.exec(
            select(Metric).where(Metric.job_id == job_id, Metric.id > after_id).order_by(Metric.id)
        ))


def delete_metrics_after(engine: Engine, job_id: int, step: int) -> int:
    """Resume from a checkpoint at `step`: keep rows with step <= step, drop the later ones
    (the resumed run writes them again), so curves have one point per step. Returns rows deleted.
    """
    with write_session(engine) as session:
        return session.execute(delete(Metric).where(Metric.job_id == job_id, Metric.step > step)).rowcount


class MetricWriter:
    """Buffers one job's metric rows; flushes when max_rows wait, when max_delay_s passed since
    the last flush, and on close.

    The delay is checked on each `add` and by a background thread every max_delay_s / 2, so a
    row reaches the database within max_delay_s * 1.5 + one write (< 1 s at 0.5 s) even when
    the next training step is slow. Flushes are serialised by one lock, so ids follow steps.
    Use as a context manager, or call `close()`.
    """

    def __init__(self, engine: Engine, job_id: int, max_rows: int = 64, max_delay_s: float = 0.5):
        if max_rows < 1 or max_delay_s <= 0:
            raise ValueError(f"MetricWriter for job {job_id}: max_rows must be >= 1 and max_delay_s > 0")
        self.engine, self.job_id = engine, job_id
        self.max_rows, self.max_delay_s = max_rows, max_delay_s
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._closed = threading.Event()
        self._timer = threading.Thread(target=self._flush_when_due, name=f"metrics-job-{job_id}", daemon=True)
        self._timer.start()

    def add(self, rows: list[dict] | dict) -> None:
        """Queue rows (validated now, in the caller's thread); flush if the buffer is full or due."""
        if self._closed.is_set():
            raise RuntimeError(f"MetricWriter for job {self.job_id} is closed")
        values = [metric_values(self.job_id, row) for row in ([rows] if isinstance(rows, dict) else rows)]
        with self._lock:
            self._pending.extend(values)
            due = len(self._pending) >= self.max_rows or time.monotonic() - self._last_flush >= self.max_delay_s
        if due:
            self.flush()

    def flush(self) -> int:
        """Write the buffered rows now; on a database error they stay buffered and the error is raised."""
        with self._lock:
            values, self._pending = self._pending, []
            try:
                _insert(self.engine, values)
            except Exception:
                self._pending = values + self._pending
                raise
            self._last_flush = time.monotonic()
            return len(values)

    def _flush_when_due(self) -> None:
        while not self._closed.wait(self.max_delay_s / 2):
            if self._pending and time.monotonic() - self._last_flush >= self.max_delay_s:
                try:
                    self.flush()
                except Exception:  # kept buffered; the next add / close retries and raises
                    logger.exception("metrics of job %d not written yet", self.job_id)

    def close(self) -> None:
        """Stop the timer and write what is left (raises if that write fails)."""
        self._closed.set()
        self._timer.join()
        self.flush()

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
