"""Handlers of the "Train" tab: plain functions of (studio, plain values), bound with
functools.partial by app/ui/train_tab.py and called directly by the tests.

Most handlers end with the job view, the same nine outputs in VIEW_OUTPUTS order:

    (job table, job dropdown, progress html, outcome markdown, curve plot, view state,
     Fine-tune button, Cancel button, timer)

The view state is the shown job's curve (app/ui/curves.py) plus the job state last
shown. The timer ticks only while the project has a queued or running job; a tick reads
only the metric rows written since the last one and leaves the plot and the dropdown
untouched (gr.update()) when nothing in them changed.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from app.jobs.lifecycle import ACTIVE_STATES, JobError, get_job, list_jobs, request_cancel, submit_job
from app.jobs.progress import steps_per_second
from app.jobs.queue import train_sender
from app.jobs.recipe import DEFAULT_PRESET, build_job_config, preset_values
from app.store.coco_export import dataset_snapshot
from app.store.dataset_stats import dataset_summary, has_val_images
from app.store.models import Job
from app.studio import Studio
from app.ui.curves import CURVE_TERMS, curve_frame, refresh_curve
from app.ui.messages import NO_PROJECT, refusal
from app.ui.train_form import display_value, editable_specs, form_overrides
from app.ui.train_jobs import job_choices, job_outcome, job_rows, progress_html
from app.ui.train_summary import project_summary
from sam3_lora.config import ConfigError

VIEW_OUTPUTS = ("jobs", "job", "progress", "outcome", "curve", "view", "start", "cancel", "timer")


def _project_id(project_id: Any) -> int | None:
    return None if project_id in (None, "") else int(project_id)


def _shown_job(jobs: list[Job], job_id: Any) -> Job | None:
    """The chosen job when it belongs to the project, else the newest (after a reload, a new project)."""
    if job_id not in (None, ""):
        for job in jobs:
            if job.id == int(job_id):
                return job
    return jobs[0] if jobs else None


def job_view(studio: Studio, project_id: Any, job_id: Any = None, view: dict | None = None,
             terms: list[str] | None = None, tick: bool = False) -> tuple:
    """The nine VIEW_OUTPUTS for the project's jobs, showing `job_id` (default: the newest).

    tick=True (the timer): the plot and the dropdown are gr.update() when unchanged.
    """
    terms = list(CURVE_TERMS) if terms is None else terms
    project_id = _project_id(project_id)
    jobs = list_jobs(studio.engine, project_id) if project_id is not None else []
    job = _shown_job(jobs, job_id)
    shown = (job.id, job.state) if job else (None, None)
    dropdown_changed = not tick or ((view or {}).get("job_id"), (view or {}).get("job_state")) != shown
    curve, curve_changed = refresh_curve(studio.engine, view, shown[0], job.attempt if job else 0)
    curve["job_state"] = shown[1]
    active = any(j.state in ACTIVE_STATES for j in jobs)
    rate = steps_per_second(studio.engine, job) if job is not None and job.state == "running" else None
    return (
        job_rows(studio.engine, jobs),
        gr.update(choices=job_choices(jobs), value=shown[0]) if dropdown_changed else gr.update(),
        progress_html(job, rate),
        job_outcome(studio.engine, job),
        curve_frame(curve, terms) if curve_changed or not tick else gr.update(),
        curve,
        gr.update(interactive=project_id is not None and not active),
        gr.update(interactive=job is not None and job.state in ACTIVE_STATES),
        gr.Timer(active=active),
    )


def show_project(studio: Studio, project_id: Any, view: dict | None, terms: list[str]) -> tuple:
    """Page load / project change: (summary, message, *job view of the newest job)."""
    return (project_summary(studio.engine, _project_id(project_id)), "",
            *job_view(studio, project_id, None, view, terms))


def enter_tab(studio: Studio, project_id: Any, job_id: Any, view: dict | None, terms: list[str]) -> tuple:
    """The tab is opened again: labels may have changed in Annotate, a job may have started
    elsewhere. -> (summary, *job view of the shown job)."""
    return (project_summary(studio.engine, _project_id(project_id)), *job_view(studio, project_id, job_id, view, terms))


def refresh_summary(studio: Studio, project_id: Any) -> str:
    return project_summary(studio.engine, _project_id(project_id))


def tick(studio: Studio, project_id: Any, job_id: Any, view: dict | None, terms: list[str]) -> tuple:
    """The 1 s timer: new rows and the job's progress."""
    return job_view(studio, project_id, job_id, view, terms, tick=True)


def pick_job(studio: Studio, project_id: Any, job_id: Any, view: dict | None, terms: list[str]) -> tuple:
    return job_view(studio, project_id, job_id, view, terms)


def pick_terms(view: dict | None, terms: list[str]):
    """The plot with only the chosen loss terms (no database read)."""
    return curve_frame(view, terms)


def choose_preset(preset: str) -> list:
    """The Advanced fields' values (editable_specs order) for `preset`."""
    values = preset_values(preset or DEFAULT_PRESET)
    return [display_value(spec, values[spec.key]) for spec in editable_specs()]


def start_finetune(studio: Studio, project_id: Any, preset: str, view: dict | None, terms: list[str],
                   *field_values: Any, send=None) -> tuple:
    """Fine-tune: preset + the Advanced fields (editable_specs order) -> a queued job of the
    project's current labels. -> (message, *job view showing the new job).

    Refused with a message naming the key (bad value), the project's running job, or an
    empty dataset; nothing is created then. `send` defaults to the studio's Celery sender.
    """
    specs = editable_specs()
    try:
        project_id = _project_id(project_id)
        if project_id is None:
            raise ValueError(NO_PROJECT)
        if len(field_values) != len(specs):
            raise ValueError(f"expected {len(specs)} Advanced values, got {len(field_values)}")
        overrides = form_overrides({spec.key: value for spec, value in zip(specs, field_values)})
        config = build_job_config(preset, overrides, studio.models.status().source,
                                  has_val_images(studio.engine, project_id))
        job = submit_job(studio.engine, project_id, config, dataset_snapshot(studio.engine, project_id),
                         send or train_sender(studio.settings))
    except (ConfigError, JobError, ValueError) as error:
        return (refusal("cannot start the fine-tune", error), *job_view(studio, project_id, None, view, terms))
    sent = ("" if job.enqueued_at is not None
            else " The broker did not answer: the job waits and is sent again every 30 s.")
    counts = dataset_summary(studio.engine, project_id).concepts
    train, val = sum(c.train_instances for c in counts), sum(c.val_instances for c in counts)
    message = (f"Job {job.id} queued with the {preset} preset: it trains on {train} labelled instances of `train` "
               f"images and evaluates on {val} of `val` images.{sent}")
    return (message, *job_view(studio, project_id, job.id, view, terms))


def cancel_job(studio: Studio, project_id: Any, job_id: Any, view: dict | None, terms: list[str]) -> tuple:
    """Cancel the shown job: a queued one at once, a running one after its current step.
    -> (message, *job view)."""
    try:
        if job_id in (None, ""):
            raise ValueError("no job is shown")
        job = get_job(studio.engine, int(job_id))
        if job is None or job.project_id != _project_id(project_id):
            raise ValueError(f"job {job_id} is not in this project")
        state = request_cancel(studio.engine, job.id)
    except (ValueError, JobError) as error:
        return (refusal("cannot cancel", error), *job_view(studio, project_id, job_id, view, terms))
    messages = {"cancelled": f"Job {job.id} cancelled before it started.",
                "running": f"Cancel requested: job {job.id} stops after its current step and keeps a partial adapter."}
    message = messages.get(state, f"Job {job.id} had already ended ({state}).")
    return (message, *job_view(studio, project_id, job.id, view, terms))
