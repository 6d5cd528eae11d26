"""Waiting on real processes: a deadline sized from the work, and the evidence when it passes.

A wait in a test is a claim "this work finishes", not a timing: the deadline is the
work's cost on the slowest machine we run on, times a slack for load, so a slower or
busier machine is not a failure. When it does pass, the failure shows what the test
was waiting on (the worker logs, the job rows), so the cause is on the page.

    deadline_s = (start_s + units * per_unit_s) * TIME_FACTOR

start_s and per_unit_s are measured on an idle 2-core machine of the project's kind;
TIME_FACTOR (env TEST_TIME_FACTOR, default 4) covers a machine twice as slow with two
CPU burners beside it.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import pytest

TIME_FACTOR = float(os.environ.get("TEST_TIME_FACTOR", "4"))
T = TypeVar("T")


def work_deadline_s(start_s: float, units: int = 0, per_unit_s: float = 0.0) -> float:
    """Seconds to allow for a start-up of start_s plus `units` pieces of per_unit_s each (module docstring)."""
    return (start_s + units * per_unit_s) * TIME_FACTOR


def log_tails(paths: Iterable[Path], chars: int = 3000) -> str:
    """The last `chars` characters of every file of `paths` that exists, each under its name."""
    return "\n".join(f"--- {path}\n{path.read_text(errors='replace')[-chars:]}" for path in paths if path.exists())


def job_rows(engine, job_ids: Iterable[int]) -> str:
    """One line per job row (state, attempt, step, worker, error), for a failure message."""
    from app.store.db import read_session
    from app.store.models import Job

    with read_session(engine) as session:
        rows = [session.get(Job, job_id) for job_id in job_ids]
    return "\n".join(f"job {row.id}: state={row.state} attempt={row.attempt} step={row.step}/{row.total_steps} "
                     f"worker={row.worker!r} error={row.error!r}" if row else "job missing" for row in rows)


def wait_until(condition: Callable[[], T], what: str, timeout_s: float, evidence: Callable[[], str],
               poll_s: float = 0.1) -> T:
    """Poll `condition` until it returns a truthy value (returned); past `timeout_s`, fail with
    "<what> within <timeout_s> s" and the text `evidence()` gives (logs, rows)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout_s:.0f} s\n{evidence()}")
        time.sleep(poll_s)
