"""Annotations with revisions: every save names the revision it edited, a stale one is
refused (RevisionConflict) instead of silently overwriting someone's work, and an
append-only history keeps every saved version and every refused attempt.

Masks are COCO RLE `{"size": [h, w], "counts": str}` (compressed) or with `counts`
as a list of run lengths (uncompressed; stored compressed). bbox `[x, y, w, h]` and
area (pixel count) are derived from the RLE with pycocotools, never taken from the client.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from pycocotools import mask as coco_mask
from sqlalchemy import Engine, false, select, update
from sqlalchemy.exc import IntegrityError

from app.store.db import read_session, write_session
from app.store.models import Annotation, AnnotationHistory, Concept, Image, utcnow

__all__ = [
    "ANNOTATION_SOURCES", "RevisionConflict", "CheckedMask", "check_mask", "decode_rle_counts",
    "save_annotation", "delete_annotation", "get_annotation", "list_annotations", "annotation_history",
]

ANNOTATION_SOURCES = ("human", "model", "import")


class RevisionConflict(ValueError):
    """A save or delete based on a revision that is no longer the current one."""

    def __init__(self, annotation_id: int, base_revision: int, current_revision: int):
        self.annotation_id = annotation_id
        self.base_revision = base_revision
        self.current_revision = current_revision
        super().__init__(
            f"annotation {annotation_id} was edited from revision {base_revision} but is now at revision "
            f"{current_revision} (someone saved in between); your version is kept in its history: reload and reapply it"
        )

    def __reduce__(self):  # picklable across processes despite the custom __init__
        return (RevisionConflict, (self.annotation_id, self.base_revision, self.current_revision))


# ---------------------------------------------------------------- masks

def decode_rle_counts(counts: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string.

    Each run is a little-endian sequence of 5-bit groups stored as chr(48 + group),
    bit 0x20 = "another group follows", bit 0x10 of the last group = sign. From the
    4th run on, the string holds the difference to the run two places earlier.
    Checked here, in Python, because pycocotools' decoder trusts the string.
    """
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift = 0, 0
        while True:
            if position >= len(counts):
                raise ValueError("RLE counts string ends in the middle of a run")
            group = ord(counts[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"RLE counts has the invalid character {counts[position]!r} at {position}")
            position += 1
            value |= (group & 0x1F) << shift
            shift += 5
            if not group & 0x20:
                if group & 0x10:
                    value -= 1 << shift  # sign-extend the last group
                break
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


@dataclass(frozen=True)
class CheckedMask:
    """A validated mask: compressed RLE as stored, its bbox [x, y, w, h] and pixel area."""

    height: int
    width: int
    rle_json: str
    bbox_json: str
    area: float


def check_mask(rle: object) -> CheckedMask:
    """Validate a COCO RLE (runs >= 0 summing to h*w, at least one pixel set) and derive bbox/area."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError('mask must be a COCO RLE dict {"size": [height, width], "counts": ...}')
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"mask size must be [height, width] with positive integers, got {size!r}")
    height, width = size
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        runs = decode_rle_counts(counts)
    elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
        runs = counts
    else:
        raise ValueError("mask counts must be a compressed RLE string or a list of run lengths")
    if any(run < 0 for run in runs) or sum(runs) != height * width:
        raise ValueError(f"mask runs must be >= 0 and cover {height}x{width} = {height * width} pixels, they cover {sum(runs)}")
    if isinstance(counts, list):
        counts = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)["counts"].decode("ascii")
    compressed = {"size": [height, width], "counts": counts}
    area = float(coco_mask.area(compressed))
    if area == 0:
        raise ValueError("mask is empty (no pixel set)")
    bbox = [float(v) for v in coco_mask.toBbox(compressed)]
    return CheckedMask(height, width, json.dumps(compressed), json.dumps(bbox), area)


# ---------------------------------------------------------------- saves

def _check_source_and_score(source: str, score: float | None) -> None:
    if source not in ANNOTATION_SOURCES:
        raise ValueError(f"annotation source {source!r} is not one of {', '.join(ANNOTATION_SOURCES)}")
    if score is not None and not (isinstance(score, (int, float)) and math.isfinite(score) and 0.0 <= score <= 1.0):
        raise ValueError(f"annotation score must be a number in [0, 1] or None, got {score!r}")


def _mark_image(session, image_id: int, source: str) -> None:
    """A human save means the image was looked at ("reviewed"). A model save adds a proposal
    nobody reviewed yet, so the image is "proposed" whatever it held before (imported masks
    make an image "reviewed", and Find all / clicks on it still await a person). An import
    save only lifts an unlabelled image (to "reviewed"), never demotes it. The pre-label
    job never reaches a reviewed image (proposals.write_image_proposals skips it)."""
    query = update(Image).where(Image.id == image_id)
    if source == "human":
        query = query.where(Image.status != "reviewed").values(status="reviewed")
    elif source == "model":
        query = query.where(Image.status != "proposed").values(status="proposed")
    else:
        query = query.where(Image.status == "unlabelled").values(status="reviewed")
    session.execute(query.execution_options(synchronize_session=False))


def _guarded_update(session, annotation_id: int, base_revision: int, values: dict) -> Annotation:
    """UPDATE ... SET revision = revision + 1 WHERE id = ? AND revision = ?; 0 rows = conflict.
    The WHERE is re-checked under the row lock, so this holds on PostgreSQL too."""
    result = session.execute(
        update(Annotation)
        .where(Annotation.id == annotation_id, Annotation.revision == base_revision)
        .values(revision=Annotation.revision + 1, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        current = session.scalar(select(Annotation.revision).where(Annotation.id == annotation_id))
        if current is None:
            raise ValueError(f"annotation {annotation_id} does not exist")
        raise RevisionConflict(annotation_id, base_revision, current)
    annotation = session.get(Annotation, annotation_id)
    session.refresh(annotation)
    return annotation


def _history_row(annotation: Annotation, outcome: str, revision: int, author: str) -> AnnotationHistory:
    return AnnotationHistory(
        annotation_id=annotation.id, revision=revision, outcome=outcome, concept_id=annotation.concept_id,
        rle=annotation.rle, bbox=annotation.bbox, source=annotation.source, score=annotation.score,
        deleted=annotation.deleted, author=author,
    )


def _record_conflict(engine: Engine, attempt: Annotation, conflict: RevisionConflict, author: str) -> None:
    """Keep the refused version (own write transaction, after the failed one rolled back)."""
    try:
        with write_session(engine) as session:
            session.add(_history_row(attempt, "conflict", conflict.base_revision, author))
    except IntegrityError:  # the annotation itself was removed meanwhile: nothing to attach it to
        pass


def save_annotation(
    engine: Engine, *, image_id: int, concept_id: int, rle: dict, annotation_id: int | None = None,
    base_revision: int | None = None, source: str = "human", score: float | None = None,
    iscrowd: bool = False, author: str = "", proposed_by: str = "",
) -> Annotation:
    """Create (annotation_id None: revision 1) or edit (base_revision = the revision the
    client edited: revision + 1) an annotation, append a "saved" history row in the same
    transaction, and update the image's status. A stale base_revision raises
    RevisionConflict after recording the attempt as a "conflict" history row. Saving a
    deleted annotation at its current revision restores it. `proposed_by` ("base" | "adapter:<id>")
    names the model of a new source="model" annotation; an edit keeps the value it had."""
    _check_source_and_score(source, score)
    if annotation_id is None and base_revision is not None:
        raise ValueError("base_revision is only for edits: pass annotation_id too, or neither for a new annotation")
    if annotation_id is not None and base_revision is None:
        raise ValueError(f"annotation {annotation_id}: an edit needs base_revision, the revision it was made on")
    mask = check_mask(rle)  # before taking the write lock
    values = dict(
        concept_id=concept_id, rle=mask.rle_json, bbox=mask.bbox_json, area=mask.area, iscrowd=bool(iscrowd),
        source=source, score=None if score is None else float(score), deleted=False,
    )
    try:
        with write_session(engine) as session:
            image = session.get(Image, image_id)
            if image is None:
                raise ValueError(f"image {image_id} does not exist")
            if (mask.height, mask.width) != (image.height, image.width):
                raise ValueError(
                    f"mask is {mask.height}x{mask.width} (height x width) but image {image_id} is {image.height}x{image.width}"
                )
            concept = session.get(Concept, concept_id)
            if concept is None or concept.project_id != image.project_id:
                raise ValueError(f"concept {concept_id} is not a concept of image {image_id}'s project {image.project_id}")
            if annotation_id is None:
                annotation = Annotation(image_id=image_id, revision=1, proposed_by=proposed_by, **values)
                session.add(annotation)
                session.flush()
            else:
                existing = session.get(Annotation, annotation_id)
                if existing is None:
                    raise ValueError(f"annotation {annotation_id} does not exist")
                if existing.image_id != image_id:
                    raise ValueError(f"annotation {annotation_id} belongs to image {existing.image_id}, not image {image_id}")
                annotation = _guarded_update(session, annotation_id, base_revision, values)
            session.add(_history_row(annotation, "saved", annotation.revision, author))
            _mark_image(session, image_id, source)
            return annotation
    except RevisionConflict as conflict:
        _record_conflict(engine, Annotation(id=annotation_id, image_id=image_id, **values), conflict, author)
        raise


def delete_annotation(engine: Engine, annotation_id: int, base_revision: int, author: str = "") -> Annotation:
    """Soft delete: deleted = True, revision + 1, a "saved" history row with deleted = True.
    A stale base_revision raises RevisionConflict (recorded as a "conflict" delete attempt)."""
    try:
        with write_session(engine) as session:
            existing = session.get(Annotation, annotation_id)
            if existing is None:
                raise ValueError(f"annotation {annotation_id} does not exist")
            attempt = Annotation(**{**existing.model_dump(), "deleted": True})
            if existing.deleted and existing.revision == base_revision:
                raise ValueError(f"annotation {annotation_id} is already deleted (revision {base_revision})")
            annotation = _guarded_update(session, annotation_id, base_revision, {"deleted": True})
            session.add(_history_row(annotation, "saved", annotation.revision, author))
            return annotation
    except RevisionConflict as conflict:
        _record_conflict(engine, attempt, conflict, author)
        raise


# ---------------------------------------------------------------- reads

def get_annotation(engine: Engine, annotation_id: int) -> Annotation:
    with read_session(engine) as session:
        annotation = session.get(Annotation, annotation_id)
    if annotation is None:
        raise ValueError(f"annotation {annotation_id} does not exist")
    return annotation


def list_annotations(engine: Engine, image_id: int, include_deleted: bool = False) -> list[Annotation]:
    """The image's annotations in creation order (soft-deleted ones only when asked)."""
    query = select(Annotation).where(Annotation.image_id == image_id)
    if not include_deleted:
        query = query.where(Annotation.deleted == false())
    with read_session(engine) as session:
        return list(session.scalars(query.order_by(Annotation.id)))


def annotation_history(engine: Engine, annotation_id: int) -> list[AnnotationHistory]:
    """Every save attempt of the annotation, oldest first (outcome "saved" or "conflict")."""
    query = select(AnnotationHistory).where(AnnotationHistory.annotation_id == annotation_id).order_by(AnnotationHistory.id)
    with read_session(engine) as session:
        return list(session.scalars(query))
