"""COCO import: a COCO json + its images -> concepts, images and annotations of a project.

Categories become concepts (matched by name, created when missing). Images go
through the upload checks (uploads.ingest_bytes). Annotation masks: RLE (compressed
or uncompressed), polygons (clipped to the image, counted as "clipped") or, with no
segmentation, the bbox as a box-shaped mask (counted as "boxes_as_masks"). Each
stored bbox is the tight box of the stored mask and area its pixel count, so box
and mask always agree and import -> export -> import changes nothing.
Anything unusable is skipped with a reason; the rest is inserted in ONE write
transaction (source "import", revision 1, one AnnotationHistory row each). Like an
import save in annotations.py, it lifts the COCO file's "unlabelled" images to
"reviewed": the file says they are labelled, so those without annotations are
true negatives.
"""
from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import Engine, update
from sqlmodel import select

from app.store.annotations import CheckedMask, check_mask
from app.store.db import write_session
from app.store.masks import coco_shape_to_rle, rle_area
from app.store.models import Annotation, AnnotationHistory, Concept, Image
from app.store.projects import CONCEPT_PALETTE, clean_name
from app.store.uploads import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_ZIP_TOTAL_BYTES,
    UploadReport,
    ingest_bytes,
    open_zip,
    read_upload_file,
    read_zip_member,
    require_project,
    unsafe_member_name,
    zip_members,
)

ImageFinder = Callable[[str], "bytes | str"]  # file_name -> bytes, or the reason it is unavailable


class SkipAnnotation(ValueError):
    """One annotation cannot be imported; the message is the reason."""


@dataclass
class ImportReport:
    images: UploadReport = field(default_factory=UploadReport)
    concepts_created: list[str] = field(default_factory=list)
    annotations_imported: int = 0
    boxes_as_masks: int = 0  # bbox-only annotations stored as box-shaped masks
    clipped: int = 0  # polygons or boxes partly outside their image, clipped to it
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)

    def messages(self) -> list[str]:
        lines = [f"{item}: {reason}" for item, reason in self.skipped]
        if self.boxes_as_masks:
            lines.append(f"{self.boxes_as_masks} annotation(s) had only a box; stored as box-shaped masks")
        if self.clipped:
            lines.append(f"{self.clipped} annotation(s) reached outside their image; clipped to it")
        return self.images.messages() + lines


@dataclass(frozen=True)
class _PendingAnnotation:
    image_id: int
    category_name: str
    mask: CheckedMask
    iscrowd: bool


def parse_coco_json(raw: bytes, label: str) -> dict[str, Any]:
    """Bytes -> the COCO dict; ValueError naming `label` and the parser's position."""
    try:
        document = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{label} is not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{label} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno} (char {error.pos})"
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise ValueError(f"{label} is not a COCO file: expected an object with an 'images' list")
    for key in ("annotations", "categories"):
        if not isinstance(document.get(key, []), list):
            raise ValueError(f"{label}: '{key}' must be a list")
    return document


def annotation_mask(annotation: dict[str, Any], height: int, width: int) -> tuple[CheckedMask, str]:
    """COCO annotation -> (checked mask at the image size, kind) with kind rle | polygon | box.

    Raises SkipAnnotation with the reason. Kind gets "-clipped" when part of the
    polygon or box lay outside the image.
    """
    try:
        rle, kind = coco_shape_to_rle(annotation.get("segmentation"), annotation.get("bbox"), height, width)
    except ValueError as error:
        raise SkipAnnotation(str(error)) from None
    if kind != "rle" and rle_area(rle) == 0:
        raise SkipAnnotation(f"{kind.split('-')[0]} covers no pixel of the image (zero area)")
    try:
        mask = check_mask(rle)  # untrusted RLEs are validated here, before pycocotools decodes them
    except ValueError as error:
        raise SkipAnnotation(f"RLE mask is invalid: {error}") from None
    if (mask.height, mask.width) != (height, width):
        raise SkipAnnotation(f"RLE mask is {mask.width}x{mask.height} but its image is {width}x{height}")
    return mask, kind


def _category_names(document: dict[str, Any], report: ImportReport) -> dict[Any, str]:
    names: dict[Any, str] = {}
    for index, category in enumerate(document.get("categories", [])):
        label = f"category {category.get('id', f'#{index}') if isinstance(category, dict) else f'#{index}'}"
        if not isinstance(category, dict) or "id" not in category:
            report.skipped.append((label, "category without an id"))
        elif not isinstance(category.get("name"), str) or not category["name"].strip():
            report.skipped.append((label, "category without a name"))
        else:
            try:
                names[category["id"]] = clean_name(category["name"], "category name")
            except (ValueError, TypeError) as error:  # TypeError: an unhashable id
                report.skipped.append((label, str(error)))
    return names


def _import_images(
    document: dict[str, Any], find_image: ImageFinder, ingest: Callable[[str, bytes], Any], report: ImportReport
) -> dict[Any, tuple[int, int, int] | str]:
    """COCO image id -> (db image id, height, width), or the reason its annotations are skipped."""
    images: dict[Any, tuple[int, int, int] | str] = {}
    for index, entry in enumerate(document["images"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), (int, str)) or not isinstance(
            entry.get("file_name"), str
        ):
            report.skipped.append((f"image #{index}", "image entry without an id or a file_name"))
            continue
        name = entry["file_name"]
        if entry["id"] in images:
            report.skipped.append((name, f"image id {entry['id']} is listed twice; the first entry is used"))
            continue
        data = find_image(name)
        if isinstance(data, str):
            report.skipped.append((name, data))
            images[entry["id"]] = f"its image {name} was not imported ({data})"
            continue
        outcome = ingest(name, data)
        report.images.add(outcome)
        if outcome.status == "refused":
            images[entry["id"]] = f"its image {name} was not imported ({outcome.reason})"
            continue
        declared = (entry.get("width"), entry.get("height"))
        if None not in declared and declared != (outcome.width, outcome.height):
            # EXIF rotation or a wrong file: the annotations would not line up.
            stored = f"{outcome.width}x{outcome.height}"
            reason = f"image {name} is {stored} but the COCO file says {declared[0]}x{declared[1]}"
            report.skipped.append((name, f"{reason}; its annotations are skipped"))
            images[entry["id"]] = reason
            continue
        images[entry["id"]] = (outcome.image_id, outcome.height, outcome.width)
    return images


def _pending_annotations(
    document: dict[str, Any], images: dict, category_names: dict[Any, str], report: ImportReport
) -> list[_PendingAnnotation]:
    pending: list[_PendingAnnotation] = []
    for index, annotation in enumerate(document.get("annotations", [])):
        label = f"annotation {annotation.get('id', f'#{index}') if isinstance(annotation, dict) else f'#{index}'}"
        try:
            if not isinstance(annotation, dict):
                raise SkipAnnotation("not an object")
            if not isinstance(annotation.get("image_id"), (int, str)) or annotation["image_id"] not in images:
                raise SkipAnnotation(f"unknown image id {annotation.get('image_id')!r}")
            image = images[annotation["image_id"]]
            if isinstance(image, str):
                raise SkipAnnotation(image)
            category_id = annotation.get("category_id")
            if not isinstance(category_id, (int, str)) or category_id not in category_names:
                raise SkipAnnotation(f"unknown category id {category_id!r}")
            image_id, height, width = image
            mask, kind = annotation_mask(annotation, height, width)
        except SkipAnnotation as skip:
            report.skipped.append((label, str(skip)))
            continue
        report.boxes_as_masks += kind.startswith("box")
        report.clipped += kind.endswith("clipped")
        pending.append(
            _PendingAnnotation(image_id, category_names[category_id], mask, bool(annotation.get("iscrowd", 0)))
        )
    return pending


def _ensure_concepts(session, project_id: int, names: list[str], report: ImportReport) -> dict[str, int]:
    """Lower-cased name -> concept id; missing ones created with the next free palette colour.

    Matched ignoring case, as projects.add_concept does ("Crack" and "crack" prompt alike).
    """
    existing = list(session.exec(select(Concept).where(Concept.project_id == project_id)))
    concepts = {c.name.lower(): c.id for c in existing}
    used_colors = {c.color.lower() for c in existing}
    for name in names:
        if name.lower() in concepts:
            continue
        free = [color for color in CONCEPT_PALETTE if color not in used_colors]
        color = free[0] if free else CONCEPT_PALETTE[len(concepts) % len(CONCEPT_PALETTE)]
        concept = Concept(project_id=project_id, name=name, color=color)
        session.add(concept)
        session.flush()
        concepts[name.lower()] = concept.id
        used_colors.add(color)
        report.concepts_created.append(name)
    return concepts


def _stored_masks(session, image_ids: list[int]) -> set[tuple[int, int, str]]:
    """(image id, concept id, RLE counts) of the non-deleted annotations on these images."""
    stored = set()
    for start in range(0, len(image_ids), 500):  # bounded IN lists
        query = select(Annotation.image_id, Annotation.concept_id, Annotation.rle).where(
            Annotation.image_id.in_(image_ids[start : start + 500]), Annotation.deleted == False  # noqa: E712
        )
        for image_id, concept_id, rle in session.exec(query):
            stored.add((image_id, concept_id, json.loads(rle)["counts"]))
    return stored


def _insert(
    engine: Engine, project_id: int, names: list[str], pending: list[_PendingAnnotation],
    listed_image_ids: list[int], report: ImportReport,
) -> None:
    """Concepts, annotations, their history and image statuses in one write transaction.

    A mask already stored on the same image for the same concept is skipped, so
    importing the same file twice adds nothing.
    """
    with write_session(engine) as session:
        concepts = _ensure_concepts(session, project_id, names, report)
        seen = _stored_masks(session, sorted({item.image_id for item in pending}))
        rows = []
        for item in pending:
            concept_id = concepts[item.category_name.lower()]
            key = (item.image_id, concept_id, json.loads(item.mask.rle_json)["counts"])
            if key in seen:
                label = f"mask of {item.category_name} on image {item.image_id}"
                report.skipped.append((label, "same mask already stored"))
                continue
            seen.add(key)
            rows.append(
                Annotation(image_id=item.image_id, concept_id=concept_id, rle=item.mask.rle_json,
                           bbox=item.mask.bbox_json, area=item.mask.area, iscrowd=item.iscrowd,
                           source="import", revision=1)
            )
        session.add_all(rows)
        session.flush()
        session.add_all(
            AnnotationHistory(annotation_id=row.id, revision=1, outcome="saved", concept_id=row.concept_id,
                              rle=row.rle, bbox=row.bbox, source="import", author="import")
            for row in rows
        )
        for start in range(0, len(listed_image_ids), 500):
            session.exec(
                update(Image)
                .where(Image.id.in_(listed_image_ids[start : start + 500]), Image.status == "unlabelled")
                .values(status="reviewed")
            )
        report.annotations_imported = len(rows)


def _run_import(
    engine: Engine, media_dir: Path | str, project_id: int, raw_json: bytes, label: str,
    find_image: ImageFinder, max_bytes: int, max_pixels: int,
) -> ImportReport:
    report = ImportReport()
    try:
        document = parse_coco_json(raw_json, label)
    except ValueError as error:
        report.skipped.append((label, str(error)))
        return report
    category_names = _category_names(document, report)
    images = _import_images(
        document, find_image,
        lambda name, data: ingest_bytes(engine, media_dir, project_id, name, data, max_bytes, max_pixels), report,
    )
    pending = _pending_annotations(document, images, category_names, report)
    listed = sorted({image[0] for image in images.values() if not isinstance(image, str)})
    _insert(engine, project_id, list(dict.fromkeys(category_names.values())), pending, listed, report)
    return report


def _finder_from_mapping(images: Mapping[str, bytes]) -> ImageFinder:
    by_base = {}
    for key in images:
        by_base.setdefault(PurePosixPath(key).name, []).append(key)

    def find(file_name: str) -> bytes | str:
        if file_name in images:
            return images[file_name]
        matches = by_base.get(PurePosixPath(file_name).name, [])
        return images[matches[0]] if len(matches) == 1 else "missing from the upload"

    return find


def _finder_from_folder(folder: Path, max_bytes: int) -> ImageFinder:
    root = folder.resolve()

    def find(file_name: str) -> bytes | str:
        if unsafe_member_name(file_name):
            return "unsafe file name (absolute or containing '..')"
        for candidate in (root / file_name, root / PurePosixPath(file_name).name):
            resolved = candidate.resolve()
            if resolved.is_relative_to(root) and resolved.is_file():
                return read_upload_file(resolved, max_bytes)
        return "missing from the upload"

    return find


def _finder_from_zip(
    archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], json_dir: str, max_bytes: int
) -> ImageFinder:
    by_name = {info.filename: info for info in members}
    by_base: dict[str, list[zipfile.ZipInfo]] = {}
    for info in members:
        by_base.setdefault(PurePosixPath(info.filename).name, []).append(info)

    def find(file_name: str) -> bytes | str:
        candidates = [file_name, f"{json_dir}/{file_name}", f"{json_dir}/images/{file_name}", f"images/{file_name}"]
        info = next((by_name[c] for c in candidates if c in by_name), None)
        if info is None:
            matches = by_base.get(PurePosixPath(file_name).name, [])
            info = matches[0] if len(matches) == 1 else None
        return "missing from the upload" if info is None else read_zip_member(archive, info, max_bytes)

    return find


def import_coco(
    engine: Engine,
    media_dir: Path | str,
    project_id: int,
    annotations_json: bytes | Path | str,
    images: Mapping[str, bytes] | Path | str,
    max_bytes: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImportReport:
    """Import a COCO json (bytes, or a path) with images given as {file_name: bytes} or a folder.

    Images are looked up by `file_name`, then by its base name (if unique).
    """
    require_project(engine, project_id)
    if isinstance(annotations_json, (str, Path)):
        label, raw = Path(annotations_json).name, read_upload_file(Path(annotations_json), max_bytes)
        if isinstance(raw, str):
            report = ImportReport()
            report.skipped.append((label, raw))
            return report
    else:
        label, raw = "annotations.json", annotations_json
    find = _finder_from_mapping(images) if isinstance(images, Mapping) else _finder_from_folder(Path(images), max_bytes)
    return _run_import(engine, media_dir, project_id, raw, label, find, max_bytes, max_pixels)


def import_coco_zip(
    engine: Engine,
    media_dir: Path | str,
    project_id: int,
    zip_source: bytes | Path | str,
    max_bytes: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_total_bytes: int = DEFAULT_MAX_ZIP_TOTAL_BYTES,
    zip_name: str = "upload.zip",
) -> ImportReport:
    """Import a zip holding exactly one COCO .json and its images (same checks as ingest_zip)."""
    require_project(engine, project_id)
    report = ImportReport()
    try:
        archive = open_zip(zip_source)
    except ValueError as error:
        report.skipped.append((zip_name, str(error)))
        return report
    with archive:
        members, refused = zip_members(archive, max_total_bytes)
        report.skipped.extend(refused)
        json_members = [info for info in members if info.filename.lower().endswith(".json")]
        if len(json_members) != 1:
            found = ", ".join(info.filename for info in json_members) or "none"
            report.skipped.append((zip_name, f"the zip must hold exactly one COCO .json file (found: {found})"))
            return report
        raw = read_zip_member(archive, json_members[0], max_bytes)
        if isinstance(raw, str):
            report.skipped.append((json_members[0].filename, raw))
            return report
        image_members = [info for info in members if info is not json_members[0]]
        json_dir = str(PurePosixPath(json_members[0].filename).parent)
        find = _finder_from_zip(archive, image_members, json_dir, max_bytes)
        used: set[str] = set()

        def find_and_remember(file_name: str) -> bytes | str:
            used.add(file_name)
            return find(file_name)

        result = _run_import(
            engine, media_dir, project_id, raw, json_members[0].filename, find_and_remember, max_bytes, max_pixels
        )
    result.skipped[:0] = report.skipped
    listed_bases = {PurePosixPath(name).name for name in used}
    for info in image_members:
        if PurePosixPath(info.filename).name not in listed_bases:
            result.skipped.append((info.filename, "not listed in the COCO file; not imported"))
    return result
