"""How the Train tab shows jobs: the job table, the progress bar with ETA, and one job's
outcome (state, failure message, before/after mAP). Plain values from job rows.

    progress % = 100 * step / total_steps
    ETA        = (total_steps - step) / rate,  rate from app.jobs.progress.steps_per_second
"""
from __future__ import annotations

import html
import math
from datetime import datetime

from sqlalchemy import Engine

from app.jobs.progress import as_utc, steps_per_second
from app.store.adapters import adapter_metrics, adapter_of_job, map_before_after
from app.jobs.prelabel import KIND as PRELABEL
from app.store.models import Job
from app.store.proposals import prelabel_counts

JOB_HEADERS = ["Job", "State", "Progress", "Step", "ETA", "Started (UTC)", "Error"]
ERROR_CHARS_IN_TABLE = 120


def progress_percent(job: Job) -> float:
    return 100.0 * job.step / job.total_steps if job.total_steps > 0 else 0.0


def eta_seconds(job: Job, rate: float | None) -> float | None:
    """Seconds left at `rate` steps/s for a running job, None when unknown."""
    if job.state != "running" or not rate or rate <= 0 or job.total_steps <= 0:
        return None
    return max(job.total_steps - job.step, 0) / rate


def format_duration(seconds: float | None) -> str:
    """'-', '45 s', '12 min 5 s', '2 h 3 min'."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _time(moment: datetime | None) -> str:
    moment = as_utc(moment)
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def state_label(job: Job) -> str:
    if job.state == "queued" and job.enqueued_at is None:
        return "queued (waiting for the broker)"
    if job.state == "running" and job.cancel_requested:
        return "cancelling"
    return job.state


def job_rows(engine: Engine, jobs: list[Job]) -> list[list]:
    """One row per job (newest first): JOB_HEADERS. ETA only for the running job."""
    rows = []
    for job in jobs:
        eta = eta_seconds(job, steps_per_second(engine, job)) if job.state == "running" else None
        error = job.error if len(job.error) <= ERROR_CHARS_IN_TABLE else job.error[:ERROR_CHARS_IN_TABLE - 1] + "…"
        rows.append([job.id, state_label(job), f"{progress_percent(job):.0f}%",
                     f"{job.step}/{job.total_steps}" if job.total_steps else "-",
                     format_duration(eta), _time(job.started_at), error])
    return rows


def job_name(job: Job) -> str:
    """'Job 3' for a fine-tune, 'Pre-label job 4' for a pre-label run."""
    return f"Pre-label job {job.id}" if job.kind == PRELABEL else f"Job {job.id}"


def job_choices(jobs: list[Job]) -> list[tuple[str, int]]:
    return [(f"{job_name(job)} · {state_label(job)}", job.id) for job in jobs]


def progress_html(job: Job | None, rate: float | None = None) -> str:
    """A <progress> bar and its label: 'Job 3 · running · step 12 / 40 (30%) · ETA 1 min 5 s'."""
    if job is None:
        return '<div class="train-progress-label">No fine-tune yet.</div>'
    percent = progress_percent(job)
    label = f"{job_name(job)} · {state_label(job)}"
    if job.total_steps:
        unit = "image" if job.kind == PRELABEL else "step"
        label += f" · {unit} {job.step} / {job.total_steps} ({percent:.0f}%)"
    eta = eta_seconds(job, rate)
    if eta is not None:
        label += f" · ETA {format_duration(eta)}"
    value = job.step if job.total_steps else 0
    maximum = job.total_steps or 1
    return (f'<progress value="{value}" max="{maximum}" style="width:100%" aria-label="training progress">'
            f"{percent:.0f}%</progress>"
            f'<div class="train-progress-label">{html.escape(label)}</div>')


def _map(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def map_table(metrics: dict) -> str:
    """Markdown table of segm / bbox mAP before -> after, from an adapter's metrics."""
    lines = ["| mAP (val) | before | after |", "|---|---:|---:|"]
    for name, (before, after) in map_before_after(metrics).items():
        lines.append(f"| {name.split('_')[0]} | {_map(before)} | {_map(after)} |")
    return "\n".join(lines)


def job_outcome(engine: Engine, job: Job | None) -> str:
    """Markdown: what the job is doing, why it failed, or its before/after mAP."""
    if job is None:
        return ""
    if job.state == "queued":
        waiting = (" It has not reached the queue yet (broker unreachable); it is sent again every 30 s."
                   if job.enqueued_at is None else " It starts when a worker is free.")
        return f"{job_name(job)} is queued.{waiting}"
    if job.state == "running":
        note = " Cancel requested: it stops after the current step." if job.cancel_requested else ""
        return f"{job_name(job)} is running (attempt {job.attempt}).{note}"
    if job.state == "failed":
        return f"**{job_name(job)} failed:** {html.escape(job.error or 'no reason recorded')}"
    if job.kind == PRELABEL:
        return prelabel_outcome(engine, job)
    adapter = adapter_of_job(engine, job.id)
    head = (f"Job {job.id} finished." if job.state == "succeeded"
            else f"Job {job.id} was cancelled at step {job.step}.")
    if adapter is None:
        return head + " No adapter was saved."
    offer = ("\n\nTo re-propose the unreviewed images with it, choose it under **Pre-label** below and click "
             "*Propose for unlabelled images* (or set *After a fine-tune* to automatic)." if job.state == "succeeded" else "")
    return f"{head} Adapter **{html.escape(adapter.name)}** (see Models).\n\n{map_table(adapter_metrics(adapter))}{offer}"


def prelabel_outcome(engine: Engine, job: Job) -> str:
    """Markdown of a finished pre-label job: images proposed for, skipped, proposals written."""
    proposed, skipped, proposals = prelabel_counts(engine, job.id)
    head = f"Pre-label job {job.id} finished." if job.state == "succeeded" else \
        f"Pre-label job {job.id} was cancelled after {job.step} of {job.total_steps} images."
    skipped_note = f" {skipped} image(s) were reviewed meanwhile and left alone." if skipped else ""
    return (f"{head} {proposals} proposal(s) on {proposed} image(s).{skipped_note} "
            "Review them in Annotate, least certain first.")
