"""Model proposals of one image written as one unit: the pre-label job's store function.

`write_image_proposals` does, in ONE write transaction:

    image reviewed (a person saved on it)  -> nothing but a mark with skipped = True
    else: soft-delete the image's unreviewed model proposals of the job's concepts
          (revision + 1, a history row by REPLACED_BY), insert the new proposals
          (source "model", their score, proposed_by), lift the image to "proposed",
          insert PrelabelMark(job, image)

so a worker killed at any moment leaves either all of an image's writes or none, and
the mark's unique (job_id, image_id) makes a second write of the same image (a resumed
or duplicate runner) fail as a whole: an image gets its proposals exactly once per job.
Human and imported shapes, and proposals a person already edited (source "human"), are
never touched; the status read and the writes share the transaction (BEGIN IMMEDIATE on
SQLite), so a person's save either lands first (image skipped) or after (on top of them).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from sqlalchemy import Engine, false, select, update
from sqlalchemy.exc import IntegrityError

from app.store.annotations import CheckedMask, _history_row, _mark_image, check_mask
from app.store.db import read_session, write_session
from app.store.models import Annotation, Image, PrelabelMark, utcnow

__all__ = ["Proposal", "REPLACED_BY", "write_image_proposals", "done_image_ids", "model_label", "proposer_label", "prelabel_counts"]

REPLACED_BY = "pre-label"  # the history author of a proposal replaced by a newer run (not a person's reject)


@dataclass(frozen=True)
class Proposal:
    """One instance to store: concept, COCO RLE mask at the image size, score in [0, 1]."""

    concept_id: int
    rle: dict
    score: float


def model_label(adapter_id: int | None) -> str:
    """The `proposed_by` of a model: "base" or "adapter:<id>"."""
    return "base" if adapter_id is None else f"adapter:{adapter_id}"


def proposer_label(model_choice: str | None) -> str:
    """The `proposed_by` of a proposal-model choice of the UI ("base" / "" / None, or an adapter id)."""
    return model_label(None if model_choice in (None, "", "base") else int(model_choice))


def _checked(image_id: int, proposals: list[Proposal]) -> list[tuple[Proposal, CheckedMask]]:
    checked = []
    for index, proposal in enumerate(proposals):
        if not (isinstance(proposal.score, (int, float)) and math.isfinite(proposal.score) and 0 <= proposal.score <= 1):
            raise ValueError(f"image {image_id}, proposal {index}: score {proposal.score!r} must be in [0, 1]")
        checked.append((proposal, check_mask(proposal.rle)))
    return checked


def write_image_proposals(
    engine: Engine, job_id: int, image_id: int, concept_ids: list[int], proposals: list[Proposal],
    proposed_by: str, presence: dict[int, float] | None = None,
) -> PrelabelMark | None:
    """Replace image `image_id`'s unreviewed proposals of `concept_ids` by `proposals` and mark it
    done for job `job_id` (module docstring). Returns the new mark, or None when nothing was
    written: the image is gone, or this job had already marked it."""
    checked = _checked(image_id, proposals)  # before taking the write lock
    try:
        with write_session(engine) as session:
            image = session.get(Image, image_id)
            if image is None:
                return None
            if image.status == "reviewed":
                mark = PrelabelMark(job_id=job_id, image_id=image_id, skipped=True)
            else:
                _replace_unreviewed(session, image_id, concept_ids, job_id)
                for proposal, mask in checked:
                    if (mask.height, mask.width) != (image.height, image.width):
                        raise ValueError(f"image {image_id}: proposal mask is {mask.height}x{mask.width}, "
                                         f"the image {image.height}x{image.width}")
                    annotation = Annotation(
                        image_id=image_id, concept_id=proposal.concept_id, rle=mask.rle_json, bbox=mask.bbox_json,
                        area=mask.area, source="model", score=float(proposal.score), proposed_by=proposed_by)
                    session.add(annotation)
                    session.flush()
                    session.add(_history_row(annotation, "saved", 1, f"{REPLACED_BY} job {job_id}"))
                if checked:
                    _mark_image(session, image_id, "model")
                presence_json = json.dumps({str(k): float(v) for k, v in (presence or {}).items()})
                mark = PrelabelMark(job_id=job_id, image_id=image_id, proposals=len(checked),
                                    presence_json=presence_json)
            session.add(mark)
            session.flush()
            return mark
    except IntegrityError:  # (job_id, image_id) already marked: the whole transaction rolled back
        return None


def _replace_unreviewed(session, image_id: int, concept_ids: list[int], job_id: int) -> None:
    """Soft-delete the live source="model" annotations of the concepts on the image (revision + 1, history)."""
    old = session.scalars(select(Annotation).where(
        Annotation.image_id == image_id, Annotation.source == "model", Annotation.deleted == false(),
        Annotation.concept_id.in_(concept_ids))).all()
    for annotation in old:
        session.execute(update(Annotation).where(Annotation.id == annotation.id)
                        .values(deleted=True, revision=Annotation.revision + 1, updated_at=utcnow())
                        .execution_options(synchronize_session=False))
        session.refresh(annotation)
        session.add(_history_row(annotation, "saved", annotation.revision, f"{REPLACED_BY} job {job_id}"))


def done_image_ids(engine: Engine, job_id: int) -> set[int]:
    """Images job `job_id` has marked (written or skipped): a resumed run leaves them alone."""
    with read_session(engine) as session:
        return set(session.scalars(select(PrelabelMark.image_id).where(PrelabelMark.job_id == job_id)))


def prelabel_counts(engine: Engine, job_id: int) -> tuple[int, int, int]:
    """(images proposed for, images skipped as reviewed, proposals written) by job `job_id` so far."""
    with read_session(engine) as session:
        marks = session.execute(select(PrelabelMark.skipped, PrelabelMark.proposals)
                                .where(PrelabelMark.job_id == job_id)).all()
    return (sum(not skipped for skipped, _ in marks), sum(bool(skipped) for skipped, _ in marks),
            sum(count for _, count in marks))
