"""Undo of this browser session's last change, as new revisions (the history keeps everything).

An undo entry is one user action (a Find all may create and delete many annotations):

    {"label": "Find all crack", "image_id": 3,
     "changes": [{"annotation_id": 7, "after_revision": 2, "before": None | {concept_id, rle, source, score, deleted}}]}

Undoing a change brings the annotation back to `before`, based on `after_revision`:
before None (it was created) or deleted -> delete_annotation; otherwise save_annotation
with the old mask / concept / source / score (which also restores a deleted one).
Changes are undone newest first; the older entry touching the same annotation is then
based on the revision the undo wrote. A RevisionConflict (someone saved meanwhile) stops
there and leaves the rest of the entry on the stack, so nothing is silently overwritten.
"""
from __future__ import annotations

from typing import Any

from app.store.annotations import RevisionConflict, delete_annotation, get_annotation, save_annotation
from app.store.masks import rle_from_json
from app.store.models import Annotation
from app.studio import Studio
from app.ui.annotate_view import copy_session, render, select
from app.ui.messages import refusal

MAX_UNDO = 50


def change_of(before: Annotation | None, after: Annotation) -> dict[str, Any]:
    """One undoable change: `after` (as saved) was `before` (None: it did not exist)."""
    state = None if before is None else {
        "concept_id": before.concept_id, "rle": before.rle, "source": before.source,
        "score": before.score, "deleted": bool(before.deleted),
    }
    return {"annotation_id": after.id, "after_revision": after.revision, "before": state}


def push_undo(session: dict[str, Any], label: str, image_id: int, changes: list[dict[str, Any]]) -> None:
    """Put an action on the session's undo stack (the oldest leave beyond MAX_UNDO)."""
    if changes:
        session["undo"] = [*session.get("undo", []), {"label": label, "image_id": image_id, "changes": changes}][-MAX_UNDO:]


def revert_change(studio: Studio, image_id: int, change: dict[str, Any]) -> Annotation:
    """Bring one annotation back to its `before` state as a new revision; RevisionConflict if it moved on."""
    before, annotation_id, revision = change["before"], change["annotation_id"], change["after_revision"]
    if before is None or before["deleted"]:
        return delete_annotation(studio.engine, annotation_id, revision, author="undo")
    return save_annotation(
        studio.engine, image_id=image_id, concept_id=before["concept_id"], rle=rle_from_json(before["rle"]),
        annotation_id=annotation_id, base_revision=revision, source=before["source"], score=before["score"],
        author="undo",
    )


def _rebase_older(older: list[dict[str, Any]], annotation_id: int, revision: int) -> None:
    """The annotation is back in the state the newest older entry touching it left it in, at `revision`
    now: that entry's change must be based on it (else undoing it too would be a false conflict)."""
    for entry in reversed(older):
        for change in reversed(entry["changes"]):
            if change["annotation_id"] == annotation_id:
                change["after_revision"] = revision
                return


def undo(studio: Studio, session: dict[str, Any], threshold: float | None) -> tuple:
    """Undo the session's last change (opening its image). -> VIEW_OUTPUTS."""
    session = copy_session(session)
    if not session["undo"]:
        return render(studio, session, threshold, refusal("", "nothing to undo in this session yet"), editor=False)
    entry = session["undo"][-1]
    remaining, skipped, message = list(entry["changes"]), [], ""
    while remaining:
        change = remaining[-1]
        try:
            reverted = revert_change(studio, entry["image_id"], change)
            _rebase_older(session["undo"][:-1], change["annotation_id"], reverted.revision)
        except RevisionConflict as conflict:
            message = refusal(
                f"cannot undo {entry['label']!r}",
                f"someone else saved revision {conflict.current_revision} of annotation {conflict.annotation_id} "
                "after your change; Reload to see it, then edit by hand",
            )
            break
        except ValueError as error:  # the annotation or its concept was removed meanwhile: nothing to bring back
            skipped.append(f"annotation {change['annotation_id']}: {error}")
        remaining.pop()
    if remaining:
        entry["changes"] = remaining
    else:
        session["undo"].pop()
        done = len(entry["changes"]) - len(skipped)
        message = f"Undid **{entry['label']}** ({done} change{'s' if done != 1 else ''})."
        if skipped:
            message += " Could not bring back " + "; ".join(skipped) + "."
    changed_image = session.get("image_id") != entry["image_id"]
    session["image_id"] = entry["image_id"]
    first = entry["changes"][0]["annotation_id"]
    try:
        annotation = get_annotation(studio.engine, first)
        select(session, None if annotation.deleted else annotation)
    except ValueError:
        select(session, None)
    if changed_image:
        message += " (Opened the image it was made on.)"
    return render(studio, session, threshold, message)
