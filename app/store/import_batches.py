"""Writing imported annotations, shared by the COCO, YOLO-seg and PNG-mask importers.

Annotations arrive in batches (BATCH_SIZE) and each batch is one write transaction:
concepts matched by name ignoring case (created when missing, with the next free
palette colour and the source's category id and supercategory), masks already stored
on the same image for the same concept skipped (so importing a file twice adds
nothing, and an import stopped half-way can simply be run again), rows inserted with
source "import", revision 1 and one AnnotationHistory row each. Memory holds one
batch, never the whole dataset.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine, update
from sqlmodel import select

from app.store.annotations import CheckedMask
from app.store.db import write_session
from app.store.models import Annotation, AnnotationHistory, Concept, Image
from app.store.projects import CONCEPT_PALETTE
from app.store.image_decode import DecodedImage
from app.store.uploads import ImageBatch, IngestOutcome, StorageFull, UploadReport, check_file

BATCH_SIZE = 500  # annotations per write transaction; also the size of IN (...) lists


class SkipAnnotation(ValueError):
    """One annotation cannot be imported; the message is the reason."""


@dataclass
class ImportReport:
    images: UploadReport = field(default_factory=UploadReport)
    concepts_created: list[str] = field(default_factory=list)
    annotations_imported: int = 0
    boxes_as_masks: int = 0  # bbox-only annotations stored as box-shaped masks
    clipped: int = 0  # polygons or boxes partly outside their image, clipped to it
    turned: int = 0  # annotations drawn on the raw (EXIF-unrotated) pixels, turned with their image
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)
    notes: list[str] = field(default_factory=list)  # how the source was read, when it needed a decision

    def messages(self) -> list[str]:
        lines = [f"{item}: {reason}" for item, reason in self.skipped]
        if self.boxes_as_masks:
            lines.append(f"{self.boxes_as_masks} annotation(s) had only a box; stored as box-shaped masks")
        if self.clipped:
            lines.append(f"{self.clipped} annotation(s) reached outside their image; clipped to it")
        if self.turned:
            lines.append(f"{self.turned} annotation(s) were drawn on EXIF-rotated pixels; turned with their image")
        return self.images.messages() + lines + self.notes


@dataclass(frozen=True)
class ConceptSource:
    """A category as the source names it: name, and its COCO id and supercategory when it has them."""

    name: str
    coco_id: int | None = None
    supercategory: str = ""


@dataclass(frozen=True)
class PendingAnnotation:
    image_id: int
    concept: ConceptSource
    mask: CheckedMask
    iscrowd: bool


def ensure_concepts(session, project_id: int, sources: list[ConceptSource], report: ImportReport) -> dict[str, int]:
    """Lower-cased name -> concept id; missing ones created with the next free palette colour.

    Matched ignoring case, as projects.add_concept does ("Crack" and "crack" prompt alike);
    a matched concept without a COCO id or supercategory takes the source's.
    """
    existing = list(session.exec(select(Concept).where(Concept.project_id == project_id)))
    by_name = {c.name.lower(): c for c in existing}
    used_colors = {c.color.lower() for c in existing}
    for source in sources:
        concept = by_name.get(source.name.lower())
        if concept is not None:
            if concept.coco_id is None and source.coco_id is not None:
                concept.coco_id = source.coco_id
            if not concept.supercategory and source.supercategory:
                concept.supercategory = source.supercategory
            continue
        free = [color for color in CONCEPT_PALETTE if color not in used_colors]
        color = free[0] if free else CONCEPT_PALETTE[len(by_name) % len(CONCEPT_PALETTE)]
        concept = Concept(project_id=project_id, name=source.name, color=color, coco_id=source.coco_id,
                          supercategory=source.supercategory)
        session.add(concept)
        session.flush()
        by_name[source.name.lower()] = concept
        used_colors.add(color)
        report.concepts_created.append(source.name)
    return {name: concept.id for name, concept in by_name.items()}


def _stored_masks(session, image_ids: list[int]) -> set[tuple[int, int, str]]:
    """(image id, concept id, RLE counts) of the non-deleted annotations on these images."""
    stored = set()
    for start in range(0, len(image_ids), BATCH_SIZE):
        query = select(Annotation.image_id, Annotation.concept_id, Annotation.rle).where(
            Annotation.image_id.in_(image_ids[start : start + BATCH_SIZE]), Annotation.deleted == False  # noqa: E712
        )
        for image_id, concept_id, rle in session.exec(query):
            stored.add((image_id, concept_id, json.loads(rle)["counts"]))
    return stored


def insert_batch(engine: Engine, project_id: int, pending: list[PendingAnnotation], report: ImportReport,
                 concept_sources: list[ConceptSource] = ()) -> None:
    """Concepts (those of `pending`, plus `concept_sources`), annotations and their history in one
    write transaction; a mask already stored on the same image for the same concept is skipped."""
    sources = list(dict.fromkeys([*concept_sources, *(item.concept for item in pending)]))
    if not sources:
        return
    with write_session(engine) as session:
        concepts = ensure_concepts(session, project_id, sources, report)
        seen = _stored_masks(session, sorted({item.image_id for item in pending}))
        rows = []
        for item in pending:
            concept_id = concepts[item.concept.name.lower()]
            key = (item.image_id, concept_id, json.loads(item.mask.rle_json)["counts"])
            if key in seen:
                report.skipped.append((f"mask of {item.concept.name} on image {item.image_id}", "same mask already stored"))
                continue
            seen.add(key)
            rows.append(Annotation(image_id=item.image_id, concept_id=concept_id, rle=item.mask.rle_json,
                                   bbox=item.mask.bbox_json, area=item.mask.area, iscrowd=item.iscrowd,
                                   source="import", revision=1))
        session.add_all(rows)
        session.flush()
        session.add_all(
            AnnotationHistory(annotation_id=row.id, revision=1, outcome="saved", concept_id=row.concept_id,
                              rle=row.rle, bbox=row.bbox, source="import", author="import")
            for row in rows
        )
        report.annotations_imported += len(rows)


def mark_reviewed(engine: Engine, image_ids: list[int]) -> None:
    """Lift the listed images from "unlabelled" to "reviewed": the source says they are
    labelled, so those without annotations are true negatives (as an import save does)."""
    for start in range(0, len(image_ids), BATCH_SIZE):
        with write_session(engine) as session:
            session.exec(
                update(Image)
                .where(Image.id.in_(image_ids[start : start + BATCH_SIZE]), Image.status == "unlabelled")
                .values(status="reviewed")
            )


class BatchWriter:
    """Collects PendingAnnotations and writes them BATCH_SIZE at a time (insert_batch)."""

    def __init__(self, engine: Engine, project_id: int, report: ImportReport):
        self.engine, self.project_id, self.report = engine, project_id, report
        self.pending: list[PendingAnnotation] = []

    def add(self, item: PendingAnnotation) -> None:
        self.pending.append(item)
        if len(self.pending) >= BATCH_SIZE:
            self.flush()

    def flush(self, concept_sources: list[ConceptSource] = ()) -> None:
        pending, self.pending = self.pending, []
        insert_batch(self.engine, self.project_id, pending, self.report, concept_sources)


def queue_image(
    batch: ImageBatch, source, name: str, report: ImportReport, max_pixels: int,
    on_stored: Callable[[int, DecodedImage], None], split: str | None = None,
) -> bool:
    """Read and check one image file of `source` (an archive.FileSource) and queue it in `batch`;
    `on_stored(image id, decoded)` runs once it is stored. False when refused (recorded in
    report.images). A full disk raises StorageFull (from the batch)."""
    decoded = check_file(name, source.read(name), source.max_bytes, max_pixels)
    if isinstance(decoded, str):
        report.images.refused.append((name, decoded))
        return False

    def stored(outcome: IngestOutcome) -> None:
        report.images.add(outcome)
        on_stored(outcome.image_id, decoded)

    batch.add(name, decoded, stored, split)
    return True


def store_images(
    batch: ImageBatch, source, items: list[tuple[str, str | None, Callable[[int, DecodedImage], None]]],
    report: ImportReport, max_pixels: int, on_progress: Callable[[int, int], None] | None = None,
) -> bool:
    """queue_image for each (image name, split, on_stored), then flush; False when a full disk
    stopped it (recorded with stop_at_full_disk: the rest are named as not tried)."""
    try:
        for done, (name, split, on_stored) in enumerate(items, start=1):
            try:
                queue_image(batch, source, name, report, max_pixels, on_stored, split)
            except StorageFull as full:
                full.names += [later for later, _, _ in items[done:]]
                raise
            if on_progress is not None:
                on_progress(done, len(items))
        batch.flush()
    except StorageFull as full:
        stop_at_full_disk(report, full, [])
        return False
    return True


def stop_at_full_disk(report: ImportReport, full: StorageFull, later: list[str]) -> None:
    """Record a full disk: what was stored is kept, the batch's files and `later` were not tried."""
    report.images.stopped = f"{full.reason}; what was stored before it is kept"
    report.images.not_tried += full.names + later
    report.skipped.append(("annotations", "the import stopped at a full disk; free space and import again "
                           "(stored images are recognised and kept, stored masks skipped)"))
