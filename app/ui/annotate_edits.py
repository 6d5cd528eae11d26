"""Annotate-tab edits of one instance: save the brushed mask, accept, reject / delete, relabel,
select, reload. Each saves at once with the revision the editor was loaded from.

A RevisionConflict (someone else saved in between) changes nothing but the session's
base_revision, which moves to the current one: the user's edit stays in the editor,
the same button again overwrites on top of it, Reload takes theirs instead. (The
refused version is in the annotation's history either way.)
Accept and Relabel keep a brush edit that is still in the editor: what the user sees is
what gets reviewed.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from app.store.annotations import RevisionConflict, delete_annotation, get_annotation, list_annotations, save_annotation
from app.store.masks import mask_to_rle
from app.store.models import Annotation
from app.studio import Studio
from app.ui.annotate_masks import layer_to_mask
from app.ui.annotate_undo import change_of, push_undo
from app.ui.annotate_view import (
    DEFAULT_THRESHOLD, annotation_id_of_row, annotation_mask, concepts_by_id, copy_session, is_shown,
    open_image_row, render, select,
)
from app.ui.messages import refusal

NO_SELECTION = "select an instance first (click it on the image or in the table)"


def conflict_message(conflict: RevisionConflict, again: str) -> str:
    """The one message a stale save gets; `again` names the button that overwrites."""
    return (
        f"**Not saved:** someone else saved revision {conflict.current_revision} of annotation "
        f"{conflict.annotation_id}; {again} again to overwrite with your edit, or Reload to take theirs."
    )


def next_proposal(studio: Studio, image_id: int, threshold: float | None, after: int | None = None) -> Annotation | None:
    """The best-scoring shown, unreviewed model proposal of the image other than `after` (None if none)."""
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    proposals = [
        a for a in list_annotations(studio.engine, image_id)
        if a.source == "model" and a.id != after and is_shown(a, threshold, None)
    ]
    return max(proposals, key=lambda a: a.score or 0.0, default=None)


def _selected(studio: Studio, session: dict[str, Any]) -> Annotation:
    if session.get("selected") is None:
        raise ValueError(NO_SELECTION)
    return get_annotation(studio.engine, int(session["selected"]))


def _mask_in_editor(value: dict | None, annotation: Annotation, size: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """(mask to save, whether it is a brush edit): the editor's non-empty layer, else the stored mask."""
    stored = annotation_mask(annotation)
    try:
        edited = layer_to_mask(value, size, sent=stored)
    except ValueError:
        return stored, False
    if not edited.any():
        return stored, False
    return edited, not np.array_equal(edited, stored)


def _store(studio: Studio, session: dict[str, Any], before: Annotation | None, label: str, **values: Any) -> Annotation:
    """save_annotation at the session's base revision (new when before is None), recorded for undo."""
    saved = save_annotation(
        studio.engine, annotation_id=None if before is None else before.id,
        base_revision=None if before is None else session["base_revision"], **values,
    )
    push_undo(session, label, saved.image_id, [change_of(before, saved)])
    return saved


def save_mask(
    studio: Studio, session: dict[str, Any], threshold: float | None, value: dict | None, concept_id: int | None
) -> tuple:
    """Save the editor's mask as the selected instance, or as a new one of `concept_id`; source "human"."""
    session = copy_session(session)
    try:
        image = open_image_row(studio, session)
        before = None if session.get("selected") is None else _selected(studio, session)
        sent = None if before is None else annotation_mask(before)
        mask = layer_to_mask(value, (image.height, image.width), sent=sent)
        if not mask.any():
            raise ValueError("the mask is empty: paint the object with the brush, or use Delete to remove the instance")
        if before is None and concept_id in (None, ""):
            raise ValueError("choose the concept of the new instance under Concept first")
        concept = before.concept_id if before is not None else int(concept_id)
        label = "Save new instance" if before is None else f"Save mask of #{before.id}"
        saved = _store(studio, session, before, label, image_id=image.id, concept_id=concept, rle=mask_to_rle(mask),
                       source="human", score=None if before is None else before.score)
    except RevisionConflict as conflict:
        session["base_revision"] = conflict.current_revision
        return render(studio, session, threshold, conflict_message(conflict, "Save"), editor=False)
    except ValueError as error:
        return render(studio, session, threshold, refusal("cannot save the mask", error), editor=False)
    select(session, saved)
    verb = "Created" if saved.revision == 1 else "Saved"
    return render(studio, session, threshold, f"{verb} #{saved.id} as reviewed (revision {saved.revision}).", editor=False)


def accept(studio: Studio, session: dict[str, Any], threshold: float | None, value: dict | None) -> tuple:
    """Mark the selected instance reviewed (source "human"), with a brush edit if the editor holds one;
    then select the next shown proposal."""
    session = copy_session(session)
    try:
        image = open_image_row(studio, session)
        before = _selected(studio, session)
        mask, edited = _mask_in_editor(value, before, (image.height, image.width))
        if before.source == "human" and not edited:
            return render(studio, session, threshold, f"#{before.id} is already reviewed.", editor=False)
        saved = _store(studio, session, before, f"Accept #{before.id}", image_id=image.id, concept_id=before.concept_id,
                       rle=mask_to_rle(mask), source="human", score=before.score)
    except RevisionConflict as conflict:
        session["base_revision"] = conflict.current_revision
        return render(studio, session, threshold, conflict_message(conflict, "Accept"), editor=False)
    except ValueError as error:
        return render(studio, session, threshold, refusal("cannot accept", error), editor=False)
    select(session, next_proposal(studio, image.id, threshold, after=saved.id) or saved)
    message = f"Accepted #{saved.id}{' with your brush edit' if edited else ''} (revision {saved.revision})."
    if session["selected"] != saved.id:
        message += f" Next proposal: #{session['selected']}."
    return render(studio, session, threshold, message)


def delete(studio: Studio, session: dict[str, Any], threshold: float | None, verb: str = "Delete") -> tuple:
    """Delete (or, verb "Reject", turn down) the selected instance; then select the next shown proposal."""
    session = copy_session(session)
    try:
        image = open_image_row(studio, session)
        before = _selected(studio, session)
        deleted = delete_annotation(studio.engine, before.id, session["base_revision"])
        push_undo(session, f"{verb} #{before.id}", image.id, [change_of(before, deleted)])
    except RevisionConflict as conflict:
        session["base_revision"] = conflict.current_revision
        return render(studio, session, threshold, conflict_message(conflict, verb), editor=False)
    except ValueError as error:
        return render(studio, session, threshold, refusal(f"cannot {verb.lower()}", error), editor=False)
    select(session, next_proposal(studio, image.id, threshold))
    past = "Rejected" if verb == "Reject" else "Deleted"
    message = f"{past} #{before.id} (undo with z)."
    if session["selected"] is not None:
        message += f" Next proposal: #{session['selected']}."
    return render(studio, session, threshold, message)


def reject(studio: Studio, session: dict[str, Any], threshold: float | None) -> tuple:
    return delete(studio, session, threshold, verb="Reject")


def relabel(
    studio: Studio, session: dict[str, Any], threshold: float | None, value: dict | None, concept_id: int | None
) -> tuple:
    """Give the selected instance the concept `concept_id` (a human decision: source "human")."""
    session = copy_session(session)
    try:
        image = open_image_row(studio, session)
        before = _selected(studio, session)
        concepts = concepts_by_id(studio, image.project_id)
        if concept_id in (None, "") or int(concept_id) not in concepts:
            raise ValueError("choose the new concept under Concept first")
        if int(concept_id) == before.concept_id:
            raise ValueError(f"#{before.id} already is {concepts[before.concept_id].name!r}; choose another concept")
        mask, _ = _mask_in_editor(value, before, (image.height, image.width))
        saved = _store(studio, session, before, f"Relabel #{before.id}", image_id=image.id, concept_id=int(concept_id),
                       rle=mask_to_rle(mask), source="human", score=before.score)
    except RevisionConflict as conflict:
        session["base_revision"] = conflict.current_revision
        return render(studio, session, threshold, conflict_message(conflict, "Relabel"), editor=False)
    except ValueError as error:
        return render(studio, session, threshold, refusal("cannot relabel", error), editor=False)
    select(session, saved)
    name = concepts[saved.concept_id].name
    return render(studio, session, threshold, f"#{saved.id} is now **{name}**, reviewed (revision {saved.revision}).")


def select_instance(studio: Studio, session: dict[str, Any], threshold: float | None, annotation_id: int | None) -> tuple:
    """Select an instance of the open image (loads it into the editor)."""
    session = copy_session(session)
    try:
        annotation = get_annotation(studio.engine, int(annotation_id)) if annotation_id is not None else None
        if annotation is None or annotation.deleted or annotation.image_id != session.get("image_id"):
            raise ValueError(f"instance {annotation_id} is not on this image any more; Reload")
    except ValueError as error:
        return render(studio, session, threshold, refusal("cannot select", error), editor=False)
    select(session, annotation)
    return render(studio, session, threshold, f"Selected #{annotation.id} (revision {annotation.revision}).", listing=False)


def select_row(studio: Studio, session: dict[str, Any], threshold: float | None, row: list | None) -> tuple:
    """A click on an instance-table row -> select_instance of its id."""
    return select_instance(studio, session, threshold, annotation_id_of_row(row))


def new_instance(studio: Studio, session: dict[str, Any], threshold: float | None) -> tuple:
    """Drop the selection: the next brush Save or prompt click makes a new instance."""
    session = copy_session(session)
    select(session, None)
    return render(studio, session, threshold, "New instance: paint it and Save (s), or + click / box it on the image.")


def reload(studio: Studio, session: dict[str, Any], threshold: float | None) -> tuple:
    """Take what is saved now: the editor shows the selected instance's current revision."""
    session = copy_session(session)
    if session.get("selected") is not None:
        try:
            current = get_annotation(studio.engine, int(session["selected"]))
            select(session, None if current.deleted else current)
        except ValueError:
            select(session, None)
    return render(studio, session, threshold, "Reloaded: showing what is saved now.")
