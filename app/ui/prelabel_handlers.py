"""Handlers of the Train tab's "Pre-label" section: propose for every unlabelled image as a
worker job (app/jobs/prelabel.py), and the project's after-a-fine-tune setting.

Plain functions of (studio, plain values), bound by app/ui/train_tab.py. The job then shows
in the tab's job list, progress bar (images done / images, ETA) and Cancel button like a
fine-tune: `start_prelabel` returns (message, *train_handlers.job_view(...)).
"""
from __future__ import annotations

import json
from typing import Any

import gradio as gr
from sqlalchemy import update

from app.jobs.lifecycle import JobError
from app.jobs.prelabel import DEFAULT_THRESHOLD, TARGET_STATUSES, submit_prelabel
from app.jobs.queue import train_sender
from app.store.db import write_session
from app.store.models import Project
from app.store.projects import count_images, get_project, list_concepts
from app.store.review_queue import LEAST_CERTAIN
from app.studio import Studio
from app.ui.messages import NO_PROJECT, refusal
from app.ui.proposal_choices import BASE_CHOICE, proposal_model_choices
from app.ui.train_handlers import job_view

SPLITS = ("all", "train", "val")
AFTER_FINETUNE = (("Ask: re-propose on click", "ask"), ("Automatic", "auto"))


def _project_id(project_id: Any) -> int | None:
    return None if project_id in (None, "") else int(project_id)


def prelabel_form(studio: Studio, project_id: Any) -> tuple:
    """The section for a project: (model dropdown, concept choices, after-fine-tune setting, counts markdown).
    The model defaults to the newest adapter (the one a fine-tune just made), else the base SAM3."""
    project_id = _project_id(project_id)
    if project_id is None:
        return (gr.update(choices=proposal_model_choices(studio, None), value=BASE_CHOICE),
                gr.update(choices=[], value=[]), gr.update(value="ask"), "")
    models = proposal_model_choices(studio, project_id)
    concepts = [(concept.name, concept.id) for concept in list_concepts(studio.engine, project_id)]
    unlabelled = count_images(studio.engine, project_id, "unlabelled")
    proposed = count_images(studio.engine, project_id, "proposed")
    counts = f"{unlabelled} unlabelled image(s), {proposed} with unreviewed proposals; reviewed images are never touched."
    return (gr.update(choices=models, value=models[1][1] if len(models) > 1 else BASE_CHOICE),
            gr.update(choices=concepts, value=[]),
            gr.update(value=get_project(studio.engine, project_id).prelabel_after_finetune), counts)


def start_prelabel(studio: Studio, project_id: Any, model_choice: str | None, split: str | None,
                   concept_ids: list | None, replace_proposed: bool, threshold: float | None, view: dict | None,
                   terms: list[str], send=None) -> tuple:
    """"Propose for unlabelled images": a queued pre-label job -> (message, *job view showing it).

    model_choice: "base" or an adapter id; split: all | train | val; concept_ids: none = every
    concept; replace_proposed: also re-propose images whose proposals nobody reviewed yet;
    threshold: proposals scoring below it are not stored (None: DEFAULT_THRESHOLD).
    """
    try:
        project_id = _project_id(project_id)
        if project_id is None:
            raise ValueError(NO_PROJECT)
        if split not in (None, *SPLITS):
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        adapter_id = None if model_choice in (None, "", BASE_CHOICE) else int(model_choice)
        statuses = TARGET_STATUSES if replace_proposed else ("unlabelled",)
        job = submit_prelabel(studio.engine, project_id, send or train_sender(studio.settings),
                              model_source=studio.models.status().source, adapter_id=adapter_id,
                              concept_ids=[int(c) for c in concept_ids or []] or None,
                              split=None if split in (None, "all") else split, statuses=statuses,
                              threshold=DEFAULT_THRESHOLD if threshold is None else float(threshold))
    except (JobError, ValueError) as error:
        return (refusal("cannot start the pre-label job", error), *job_view(studio, project_id, None, view, terms))
    sent = "" if job.enqueued_at is not None else " The broker did not answer: the job waits and is sent again."
    message = (f"Pre-label job {job.id} queued for {len(json.loads(job.dataset_snapshot))} image(s).{sent} "
               f"Review its proposals in Annotate with *{LEAST_CERTAIN}*.")
    return (message, *job_view(studio, project_id, job.id, view, terms))


def set_after_finetune(studio: Studio, project_id: Any, choice: str | None) -> str:
    """Store the project's prelabel_after_finetune ("ask" | "auto")."""
    project_id = _project_id(project_id)
    if project_id is None:
        return refusal("", NO_PROJECT)
    if choice not in dict((value, label) for label, value in AFTER_FINETUNE):
        return refusal("", f"unknown setting {choice!r}; choose ask or auto")
    with write_session(studio.engine) as session:
        session.execute(update(Project).where(Project.id == project_id).values(prelabel_after_finetune=choice))
    if choice == "auto":
        return "After each successful fine-tune, its adapter re-proposes every unreviewed image automatically."
    return "After a fine-tune, re-propose with its adapter here, on click."
