"""Moving around the Annotate tab: project, image list with its status filter, previous / next,
and the concept and proposal-model dropdowns that follow the project.

Previous / next walk the images in upload order within the status filter as it is NOW
(app.store.image_order), so an image that just became "proposed" does not make
"next" skip or repeat one in the "unlabelled" list.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from app.store import projects
from app.store.image_order import neighbour_image_id
from app.store.review_queue import LEAST_CERTAIN, least_certain_proposal, queue_neighbour
from app.studio import Studio
from app.ui.annotate_view import (
    ALL_STATUSES, DEFAULT_THRESHOLD, copy_session, new_session, render, select, status_filter_value, unchanged_view,
)
from app.ui.messages import refusal
from app.ui.proposal_choices import BASE_CHOICE, proposal_model_choices

STATUS_FILTERS = (ALL_STATUSES, *projects.IMAGE_STATUSES, LEAST_CERTAIN)  # the last: app.store.review_queue


def _project_id(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def open_project(studio: Studio, session: dict[str, Any], threshold: float | None, project_id: Any) -> tuple:
    """A new project: fresh session (same status filter and undo stack), its first image opened.
    The project already open with an image changes nothing (gradio sends the dropdown's change
    again when the dropdown is redrawn; reopening would drop the user's image and selection).
    The new session is "restorable": the restore chained after this may go to the remembered place."""
    if session.get("image_id") is not None and session.get("project_id") == _project_id(project_id):
        return unchanged_view()
    old = copy_session(session)
    session = new_session(_project_id(project_id))
    session["status_filter"], session["undo"] = old["status_filter"], old["undo"]
    session["restorable"] = True
    if session["project_id"] is None:
        return render(studio, session, threshold, "Choose a project under Projects & Data.")
    session["image_id"] = _neighbour(studio, session, threshold, 1, from_head=True)
    if session["image_id"] is None and status_filter_value(session) is not None:  # none in the filter: show all
        session["status_filter"] = ALL_STATUSES
        session["image_id"] = neighbour_image_id(studio.engine, session["project_id"], None, 1)
    if session["image_id"] is None:
        return render(studio, session, threshold, "This project has no images yet: upload some under Projects & Data.")
    return render(studio, session, threshold, "")


def open_image(studio: Studio, session: dict[str, Any], threshold: float | None, image_id: Any) -> tuple:
    """Open one image of the project (from the image list)."""
    session = copy_session(session)
    try:
        image = projects.get_image(studio.engine, int(image_id))
        if image.project_id != session.get("project_id"):
            raise ValueError(f"image {image_id} is not in the chosen project")
    except (TypeError, ValueError) as error:
        return render(studio, session, threshold, refusal("cannot open the image", error), editor=False)
    session["image_id"] = image.id
    select(session, None)
    return render(studio, session, threshold, "")


def step_image(studio: Studio, session: dict[str, Any], threshold: float | None, step: int) -> tuple:
    """Open the next (step +1) or previous (-1) image of the filtered list."""
    session = copy_session(session)
    if session.get("project_id") is None:
        return render(studio, session, threshold, refusal("", "choose a project first"), editor=False)
    target = _neighbour(studio, session, threshold, step)
    if target is None:
        end = "last" if step > 0 else "first"
        return render(studio, session, threshold, f"This is the {end} image of the '{session['status_filter']}' list.",
                      editor=False)
    session["image_id"] = target
    select(session, _queue_selection(studio, session, threshold))
    return render(studio, session, threshold, "")


def _queue_selection(studio: Studio, session: dict[str, Any], threshold: float | None):
    """In the review queue, the open image's least certain proposal (ready for a / r), shown even when it
    scores below the threshold; elsewhere nothing."""
    if session.get("status_filter") != LEAST_CERTAIN or session.get("image_id") is None:
        return None
    return least_certain_proposal(studio.engine, int(session["image_id"]),
                                  DEFAULT_THRESHOLD if threshold is None else threshold)


def _neighbour(studio: Studio, session: dict[str, Any], threshold: float | None, step: int,
               from_head: bool = False) -> int | None:
    """The next / previous image of the filter: upload order, or the review queue for LEAST_CERTAIN."""
    current = None if from_head else session.get("image_id")
    if session.get("status_filter") == LEAST_CERTAIN:
        return queue_neighbour(studio.engine, session["project_id"], current, step,
                               DEFAULT_THRESHOLD if threshold is None else threshold)
    return neighbour_image_id(studio.engine, session["project_id"], current, step, status_filter_value(session))


def set_status_filter(studio: Studio, session: dict[str, Any], threshold: float | None, status_filter: str | None) -> tuple:
    """List only images of that status; open the first of them if the open image is not one."""
    session = copy_session(session)
    if status_filter not in STATUS_FILTERS:
        return render(studio, session, threshold, refusal("", f"unknown status filter {status_filter!r}"), editor=False)
    session["status_filter"] = status_filter
    if status_filter == LEAST_CERTAIN and session.get("project_id") is not None:  # open the head of the queue
        head = _neighbour(studio, session, threshold, 1, from_head=True)
        if head is None:
            return render(studio, session, threshold, "No image awaits review: no unreviewed proposals in this project.",
                          editor=False)
        session["image_id"] = head
        select(session, _queue_selection(studio, session, threshold))
        return render(studio, session, threshold, "Least certain first: the image the model is least sure of.")
    status = status_filter_value(session)
    if session.get("project_id") is None or status is None or session.get("image_id") is None:
        return render(studio, session, threshold, "", editor=False)
    if projects.get_image(studio.engine, int(session["image_id"])).status == status:
        return render(studio, session, threshold, "", editor=False)
    first = neighbour_image_id(studio.engine, session["project_id"], None, 1, status)
    if first is None:
        return render(studio, session, threshold, f"No {status} image in this project.", editor=False)
    session["image_id"] = first
    select(session, None)
    return render(studio, session, threshold, "")


def refresh_tab(studio: Studio, session: dict[str, Any], threshold: float | None, project_id: Any) -> tuple:
    """On entering the tab: pick up images, statuses and annotations changed elsewhere. The editor
    is sent again: gradio 6.31's ImageEditor draws nothing for a value it got while its tab was hidden.
    The session is "restorable" (see open_project): the browser may fill its memory only by now."""
    session = copy_session(session)
    if session.get("project_id") != _project_id(project_id) or session.get("image_id") is None:
        return open_project(studio, session, threshold, project_id)
    session["restorable"] = True
    return render(studio, session, threshold, "")


# ---------------------------------------------------------------- dropdowns following the project

def concept_choices(studio: Studio, project_id: Any, keep: Any = None) -> dict:
    """Concept dropdown update: the project's concepts, keeping `keep` if it still exists, else the first."""
    project_id = _project_id(project_id)
    concepts = [] if project_id is None else projects.list_concepts(studio.engine, project_id)
    ids = [concept.id for concept in concepts]
    keep = None if keep in (None, "") else int(keep)
    return gr.update(choices=[(c.name, c.id) for c in concepts], value=keep if keep in ids else (ids[0] if ids else None))


def pick_concept(studio: Studio, session: dict[str, Any], concept_id: Any) -> tuple[dict[str, Any], dict]:
    """The concept dropdown changed: remember it (a new instance's colour) and relabel the Find all button."""
    session = copy_session(session)
    session["concept_id"] = None if concept_id in (None, "") else int(concept_id)
    name = next((c.name for c in projects.list_concepts(studio.engine, session["project_id"])
                 if c.id == session["concept_id"]), None) if session.get("project_id") is not None else None
    return session, gr.update(value=f"Find all {name}" if name else "Find all")


def model_choices(studio: Studio, project_id: Any, keep: str | None = None) -> dict:
    """Proposal model dropdown update: base SAM3 and the project's adapters, keeping `keep` if it still exists."""
    choices = proposal_model_choices(studio, _project_id(project_id))
    values = [value for _, value in choices]
    return gr.update(choices=choices, value=keep if keep in values else BASE_CHOICE)
