"""What people did with the model's proposals: per proposing model and concept, how many were
accepted unchanged, edited, rejected. The number that shows labelling getting faster: an adapter
whose proposals are accepted unchanged more often than the base model's saves brush work.

Counted over proposals (annotations with `proposed_by` set: "base" | "adapter:<id>"). A proposal is what the model last wrote: its last history row with source
"model". Its outcome:

    accepted   not deleted, now source "human", same mask (RLE) and concept as proposed
    edited     not deleted, now source "human", mask or concept changed
    rejected   deleted by a person (the deleting history row's author is not a re-proposal's:
               proposals.REPLACED_BY or Find all's "find all")
    open       still source "model" on a reviewed image (left as it was); on an image not
               reviewed yet it is simply not judged and not counted

Replaced proposals (deleted by a newer run) are not counted: nobody judged them.
"""
from __future__ import annotations

from collections import defaultdict

from sqlalchemy import Engine, or_, select, true

from app.store.db import read_session
from app.store.models import Annotation, AnnotationHistory, Concept, Image
from app.store.proposals import REPLACED_BY

__all__ = ["OUTCOMES", "proposal_outcomes", "outcome_of", "accepted_share"]

OUTCOMES = ("accepted", "edited", "rejected", "open")
MACHINE_DELETERS = ("find all",)  # authors whose delete replaced a proposal (besides REPLACED_BY ...)


def outcome_of(annotation: Annotation, history: list[AnnotationHistory], image_reviewed: bool = True) -> str | None:
    """The outcome (module docstring) of one proposal from its history rows (oldest first); None when
    it was never a model proposal, was replaced by a newer run, or awaits review."""
    proposed = [row for row in history if row.source == "model" and row.outcome == "saved" and not row.deleted]
    if not proposed:
        return None
    shown = proposed[-1]
    if annotation.deleted:
        deleter = next((row for row in reversed(history) if row.deleted and row.outcome == "saved"), None)
        author = deleter.author if deleter is not None else ""
        if author.startswith(REPLACED_BY) or author in MACHINE_DELETERS:
            return None
        return "rejected"
    if annotation.source == "model":
        return "open" if image_reviewed else None
    if annotation.rle == shown.rle and annotation.concept_id == shown.concept_id:
        return "accepted"
    return "edited"


def proposal_outcomes(engine: Engine, project_id: int) -> dict[str, dict[str, dict[str, int]]]:
    """{proposed_by: {concept name: {outcome: count for each of OUTCOMES}}} of the project's proposals.
    The concept is the one proposed (a relabel counts as an edit of the proposed concept)."""
    with read_session(engine) as session:
        rows = session.execute(
            select(Annotation, Image.status).join(Image, Image.id == Annotation.image_id)
            .where(Image.project_id == project_id, Annotation.proposed_by != "",
                   # judged ones only: the many proposals still awaiting review are not read
                   or_(Annotation.source != "model", Annotation.deleted == true(), Image.status == "reviewed"))).all()
        annotations = [annotation for annotation, _ in rows]
        reviewed = {annotation.id for annotation, status in rows if status == "reviewed"}
        history: dict[int, list[AnnotationHistory]] = defaultdict(list)
        ids = [a.id for a in annotations]
        for start in range(0, len(ids), 500):  # bounded IN lists
            for row in session.scalars(select(AnnotationHistory)
                                       .where(AnnotationHistory.annotation_id.in_(ids[start:start + 500]))
                                       .order_by(AnnotationHistory.id)):
                history[row.annotation_id].append(row)
        names = dict(session.execute(select(Concept.id, Concept.name).where(Concept.project_id == project_id)).all())
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for annotation in annotations:
        rows = history[annotation.id]
        outcome = outcome_of(annotation, rows, annotation.id in reviewed)
        if outcome is None:
            continue
        proposed_concept = [row for row in rows if row.source == "model" and not row.deleted][-1].concept_id
        concept = names.get(proposed_concept, f"concept {proposed_concept}")
        per_concept = counts.setdefault(annotation.proposed_by, {})
        per_concept.setdefault(concept, dict.fromkeys(OUTCOMES, 0))[outcome] += 1
    return counts


def accepted_share(counts: dict[str, int]) -> float | None:
    """accepted / (accepted + edited + rejected): the share of judged proposals kept as they were."""
    judged = counts.get("accepted", 0) + counts.get("edited", 0) + counts.get("rejected", 0)
    return None if judged == 0 else counts.get("accepted", 0) / judged
