"""COCO import: a COCO json + its images -> concepts, images and annotations of a project.

Streaming and batched, so memory holds about 1 KB per image (the COCO id -> image map and
the report), never the file or its masks (bench/import_bench.py: +60 MB at 50,000 images):
the json is read three times, one item at a time (app.store.json_stream): first to
check it whole and collect the categories and which of them annotations use (nothing
is stored from a file that is not valid JSON), then the images, then the annotations,
written BATCH_SIZE per transaction (app.store.import_batches). An import stopped half
way can be run again: stored images are found by their pixels and stored masks skipped.

Categories become concepts (matched by name ignoring case, created when missing, keeping
their COCO id and supercategory; a Roboflow dataset-level group is not a concept:
coco_fields.category_table). Images go through the upload checks; the stored pixels
are upright and annotations follow the orientation whose size the file declares
(coco_fields.placement). Masks: RLE (compressed or uncompressed), polygons (clipped to
the image) or, with no segmentation, the bbox as a box-shaped mask. Each stored bbox
is the tight box of the stored mask and area its pixel count. Every unusable item is
skipped with its reason, never an abort; a full disk stops the import and says so.
The listed images are lifted from "unlabelled" to "reviewed": the file says they are
labelled, so those without annotations are true negatives.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from app.store.archive import MISSING, FileSource, open_zip, size_refusal, unsafe_member_name
from app.store.coco_fields import (
    Placement, annotation_mask, category_table, parse_iscrowd, placement, storable_id,
)
from app.store.image_decode import DEFAULT_MAX_PIXELS
from app.store.import_batches import (
    BatchWriter, ConceptSource, ImportReport, PendingAnnotation, SkipAnnotation, insert_batch, mark_reviewed,
    stop_at_full_disk,
)
from app.store.json_stream import JsonStreamError, iter_section, iter_sections
from app.store.names import file_name_problem
from app.store.uploads import (
    DEFAULT_MAX_ZIP_MEMBERS, DEFAULT_MAX_ZIP_TOTAL_BYTES, ImageBatch, IngestOutcome, StorageFull, check_file,
    require_project, storage_full_reason,
)

__all__ = ["ImportReport", "SkipAnnotation", "import_coco", "import_coco_zip"]

Progress = Callable[[int, int], None]  # (items done, items in all): images then annotations


@dataclass
class _Run:
    """One import: where things come from and go to, and what happened so far."""

    engine: Engine
    media_dir: Path | str
    project_id: int
    source: FileSource
    open_json: Callable[[], BinaryIO]
    label: str
    json_dir: str
    max_bytes: int
    max_pixels: int
    on_progress: Progress | None
    report: ImportReport = field(default_factory=ImportReport)
    images: dict[Any, tuple[int, Placement] | str] = field(default_factory=dict)  # COCO id -> (db id, placement) | reason
    used_files: set[str] = field(default_factory=set)
    done: int = 0
    total: int = 0
    batch: ImageBatch = None  # type: ignore[assignment]  # set in __post_init__

    def __post_init__(self) -> None:
        self.batch = ImageBatch(self.engine, self.media_dir, self.project_id)

    def step(self) -> None:
        self.done += 1
        if self.on_progress is not None and (self.done % 25 == 0 or self.done == self.total):
            self.on_progress(self.done, self.total)


def _scan(run: _Run) -> tuple[list, set]:
    """Read the whole file once: its categories, the category ids annotations use, the item count."""
    categories, used = [], set()
    for key, item in iter_sections(run.open_json, run.label, ("categories", "images", "annotations"), ("images",)):
        run.total += key != "categories"
        if key == "categories":
            categories.append(item)
        elif key == "annotations" and isinstance(item, dict):
            try:
                used.add(item.get("category_id"))
            except TypeError:  # an unhashable id; the annotation pass names it
                pass
    return categories, used


def _image(run: _Run, index: int, entry: Any) -> None:
    """Import one image entry; records its placement or the reason its annotations are skipped."""
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), (int, str)) or not isinstance(
            entry.get("file_name"), str):
        run.report.skipped.append((f"image #{index}", "image entry without an id or a file_name"))
        return
    name, image_id = entry["file_name"], entry["id"]
    if image_id in run.images:
        run.report.skipped.append((name, f"image id {image_id} is listed twice; the first entry is used"))
        return
    found = run.source.find(name, run.json_dir, f"{run.json_dir}/images", "images")
    reason = file_name_problem(name) or (None if found else
                                         "unsafe file name (absolute or containing '..')" if unsafe_member_name(name)
                                         else MISSING)
    if reason:
        run.report.skipped.append((name, reason))
        run.images[image_id] = f"its image {name} was not imported ({reason})"
        return
    run.used_files.add(found)
    decoded = check_file(name, run.source.read(found), run.max_bytes, run.max_pixels)
    place = decoded if isinstance(decoded, str) else placement(decoded, (entry.get("width"), entry.get("height")), name)
    refusal = decoded if isinstance(decoded, str) else \
        place.removeprefix("refused: ") if isinstance(place, str) and place.startswith("refused: ") else ""
    if refusal:
        run.report.images.refused.append((name, refusal))
        run.images[image_id] = f"its image {name} was not imported ({refusal})"
        return
    kept_name = entry.get("original_name")  # our own export keeps the source's name here
    kept_name = kept_name if isinstance(kept_name, str) and not file_name_problem(kept_name) else name
    split = entry.get("split") if entry.get("split") in ("train", "val") else None
    coco_id = storable_id(image_id)
    run.images[image_id] = f"its image {name} was not stored"  # until its batch is

    def stored(outcome: IngestOutcome) -> None:
        run.report.images.add(outcome)
        if isinstance(place, str):
            run.report.skipped.append((name, f"{place}; its annotations are skipped"))
            run.images[image_id] = place
        else:
            run.images[image_id] = (outcome.image_id, place)

    run.batch.add(kept_name, decoded, stored, split, coco_id)


def _import_images(run: _Run) -> bool:
    """The images pass; False when a full disk stopped it (the rest are named as not tried)."""
    entries = iter_section(run.open_json, run.label, "images")
    try:
        for index, entry in enumerate(entries):
            try:
                _image(run, index, entry)
            except StorageFull:
                raise
            except Exception as error:  # one bad entry never stops the others
                label = entry.get("file_name", f"image #{index}") if isinstance(entry, dict) else f"image #{index}"
                run.report.skipped.append((str(label), f"could not be imported ({type(error).__name__}: {error})"))
            run.step()
        run.batch.flush()
    except StorageFull as full:
        later = [e.get("file_name", f"image #{i}") if isinstance(e, dict) else f"image #{i}"
                 for i, e in enumerate(entries, start=run.done + 1)]
        stop_at_full_disk(run.report, full, later)
        return False
    return True


def _annotation(run: _Run, annotation: Any, concepts: dict) -> PendingAnnotation:
    """One annotation -> the pending row; SkipAnnotation with the reason."""
    if not isinstance(annotation, dict):
        raise SkipAnnotation("not an object")
    image = run.images.get(annotation.get("image_id")) if isinstance(annotation.get("image_id"), (int, str)) else None
    if image is None:
        raise SkipAnnotation(f"unknown image id {annotation.get('image_id')!r}")
    if isinstance(image, str):
        raise SkipAnnotation(image)
    category_id = annotation.get("category_id")
    concept = concepts.get(category_id) if isinstance(category_id, (int, str)) else None
    if concept is None:
        raise SkipAnnotation(f"unknown category id {category_id!r}")
    if isinstance(concept, str):
        raise SkipAnnotation(f"its category {category_id} was not imported ({concept})")
    iscrowd = parse_iscrowd(annotation.get("iscrowd"))
    mask, kind = annotation_mask(annotation, image[1])
    run.report.boxes_as_masks += kind.startswith("box")
    run.report.clipped += kind.endswith("clipped")
    run.report.turned += image[1].turn != 1
    return PendingAnnotation(image[0], concept, mask, iscrowd)


def _import_annotations(run: _Run, concepts: dict[Any, ConceptSource | str]) -> None:
    writer = BatchWriter(run.engine, run.project_id, run.report)
    try:
        insert_batch(run.engine, run.project_id, [], run.report,
                     [c for c in concepts.values() if isinstance(c, ConceptSource)])
        for index, annotation in enumerate(iter_section(run.open_json, run.label, "annotations")):
            label = f"annotation {annotation.get('id', f'#{index}') if isinstance(annotation, dict) else f'#{index}'}"
            try:
                writer.add(_annotation(run, annotation, concepts))
            except SkipAnnotation as skip:
                run.report.skipped.append((label, str(skip)))
            except (OperationalError, OSError):
                raise
            except Exception as error:  # OverflowError, MemoryError, ...: one bad annotation never stops the others
                run.report.skipped.append((label, f"could not be read ({type(error).__name__}: {error})"))
            run.step()
        writer.flush()
    except (OperationalError, OSError) as error:
        reason = storage_full_reason(error)
        if reason is None:
            raise
        run.report.skipped.append(("annotations", f"{reason}: the import stopped after "
                                   f"{run.report.annotations_imported} annotations; free space and import again "
                                   "(what is stored is kept and skipped on the next import)"))


def _run(run: _Run) -> ImportReport:
    report = run.report
    try:
        categories, used = _scan(run)
    except JsonStreamError as error:
        report.skipped.append((run.label, str(error)))
        return report
    concepts, notes = category_table(categories, used)
    report.notes += notes
    for category_id, concept in concepts.items():
        if isinstance(concept, str) and concept != "dataset-level group":
            report.skipped.append((f"category {category_id}", concept))
    if not _import_images(run):
        return report
    _import_annotations(run, concepts)
    mark_reviewed(run.engine, sorted({image[0] for image in run.images.values() if not isinstance(image, str)}))
    return report


def _json_opener(source: FileSource, name: str) -> Callable[[], BinaryIO]:
    return lambda: source.open(name)


def import_coco(
    engine: Engine, media_dir: Path | str, project_id: int, annotations_json: bytes | Path | str,
    images: Mapping[str, bytes] | Path | str, max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS,
    on_progress: Progress | None = None,
) -> ImportReport:
    """Import a COCO json (bytes, or a path) with images given as {file_name: bytes} or a folder.

    Images are looked up by `file_name`, then by its base name (if unique).
    """
    require_project(engine, project_id)
    if isinstance(annotations_json, (str, Path)):
        path = Path(annotations_json)
        label = path.name
        reason = size_refusal(path.stat().st_size, max_bytes) if path.is_file() else "could not be read (no such file)"
        open_json: Callable[[], BinaryIO] = lambda: open(path, "rb")  # noqa: E731
    else:
        label, reason = "annotations.json", None
        open_json = lambda: io.BytesIO(annotations_json)  # noqa: E731
    if reason:
        report = ImportReport()
        report.skipped.append((label, reason))
        return report
    source = FileSource.from_mapping(images, max_bytes) if isinstance(images, Mapping) \
        else FileSource.from_folder(Path(images), max_bytes)
    return _run(_Run(engine, media_dir, project_id, source, open_json, label, "", max_bytes, max_pixels, on_progress))


def import_coco_zip(
    engine: Engine, media_dir: Path | str, project_id: int, zip_source: bytes | Path | str, max_bytes: int,
    max_pixels: int = DEFAULT_MAX_PIXELS, max_total_bytes: int = DEFAULT_MAX_ZIP_TOTAL_BYTES,
    zip_name: str = "upload.zip", max_members: int = DEFAULT_MAX_ZIP_MEMBERS, on_progress: Progress | None = None,
) -> ImportReport:
    """Import a zip holding exactly one COCO .json and its images (same checks as ingest_zip)."""
    require_project(engine, project_id)
    report = ImportReport()
    try:
        source = FileSource.from_zip(open_zip(zip_source), max_bytes, max_total_bytes, max_members)
    except ValueError as error:
        report.skipped.append((zip_name, str(error)))
        return report
    with source:
        report.skipped.extend(source.refused)
        json_names = [name for name in source.names if name.lower().endswith(".json")]
        if len(json_names) != 1:
            found = ", ".join(json_names) or "none"
            report.skipped.append((zip_name, f"the zip must hold exactly one COCO .json file (found: {found})"))
            return report
        json_name = json_names[0]
        reason = size_refusal(source.sizes[json_name], max_bytes)
        if reason:
            report.skipped.append((json_name, reason))
            return report
        json_dir = str(PurePosixPath(json_name).parent)
        run = _Run(engine, media_dir, project_id, source, _json_opener(source, json_name), json_name, json_dir,
                   max_bytes, max_pixels, on_progress, report)
        _run(run)
        for name in source.names:
            if name != json_name and name not in run.used_files:
                report.skipped.append((name, "not listed in the COCO file; not imported"))
    return report
