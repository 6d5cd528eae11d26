"""What an export writes, read once: concepts, images, the annotations to export, and the
names and ids they keep (shared by the COCO, YOLO-seg and PNG-mask exports).

Annotations are either the current ones or, with `snapshot` = [(annotation_id,
revision), ...], exactly those saved versions read from AnnotationHistory, so a
training job sees a frozen dataset while people keep editing. By default an export
takes what a fine-tune learns from (dataset_stats.trained_annotations: drawn, accepted
or imported masks); `include_proposals` adds the unreviewed model proposals, which
carry their source and score so a COCO export can mark them.

Identities (issue 13): a concept or image that came from a COCO file keeps its COCO id
when no other exported one claims it; the others keep their store id unless that is
taken, else the next free id. File names keep the source's name with a .png suffix
(the bytes are the stored PNG, the pixels that were labelled); clashes get "-<id>".
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy import Engine
from sqlmodel import select

from app.store.dataset_stats import trained_annotations
from app.store.db import read_session
from app.store.masks import rle_from_json
from app.store.media import media_path
from app.store.models import Annotation, AnnotationHistory, Concept, Image

_CHUNK = 500  # ids per IN (...) list


class ExportError(ValueError):
    """The requested export cannot be made (unknown snapshot versions, bad split, ...)."""


@dataclass(frozen=True)
class ExportAnnotation:
    id: int
    revision: int
    image_id: int
    concept_id: int
    rle: dict
    bbox: list[float]
    iscrowd: bool
    source: str = "human"  # human | import | model (an unreviewed proposal)
    score: float | None = None


@dataclass(frozen=True)
class ExportData:
    concepts: list[Concept]  # ordered by id
    images: list[Image]  # ordered by id
    annotations: dict[int, list[ExportAnnotation]]  # image id -> its annotations, by annotation id


def dataset_snapshot(engine: Engine, project_id: int) -> list[list[int]]:
    """[[annotation_id, revision], ...] of the project's current non-deleted annotations, by id,
    leaving out unreviewed model proposals (source "model"): a fine-tune learns only from
    masks a person drew, accepted or imported."""
    query = (
        select(Annotation.id, Annotation.revision)
        .join(Image, Image.id == Annotation.image_id)
        .where(*trained_annotations(project_id))
        .order_by(Annotation.id)
    )
    with read_session(engine) as session:
        return [[annotation_id, revision] for annotation_id, revision in session.exec(query)]


def _chunks(values: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _snapshot_pairs(snapshot: Iterable) -> set[tuple[int, int]]:
    pairs = set()
    for item in snapshot:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(v, int) for v in item)):
            raise ExportError(f"snapshot entries must be [annotation_id, revision] integer pairs, got {item!r}")
        pairs.add((item[0], item[1]))
    return pairs


def _snapshot_annotations(session, project_id: int, image_ids: set[int], snapshot: Iterable) -> list[ExportAnnotation]:
    """The exact saved versions named by the snapshot; ExportError names any that do not exist."""
    pairs = _snapshot_pairs(snapshot)
    annotation_ids = sorted({annotation_id for annotation_id, _ in pairs})
    owners: dict[int, tuple[int, bool]] = {}  # annotation id -> (image id, iscrowd)
    versions: dict[tuple[int, int], AnnotationHistory] = {}
    for chunk in _chunks(annotation_ids):
        query = (
            select(Annotation.id, Annotation.image_id, Annotation.iscrowd)
            .join(Image, Image.id == Annotation.image_id)
            .where(Annotation.id.in_(chunk), Image.project_id == project_id)
        )
        owners.update((row_id, (image_id, iscrowd)) for row_id, image_id, iscrowd in session.exec(query))
        history = select(AnnotationHistory).where(
            AnnotationHistory.annotation_id.in_(chunk), AnnotationHistory.outcome == "saved"
        ).order_by(AnnotationHistory.id)
        versions.update(((row.annotation_id, row.revision), row) for row in session.exec(history))
    missing = sorted(pair for pair in pairs if pair not in versions or pair[0] not in owners)
    if missing:
        shown = ", ".join(f"annotation {a} revision {r}" for a, r in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ExportError(f"the snapshot names versions with no saved copy in project {project_id}: {shown}{more}")
    chosen = []
    for annotation_id, revision in sorted(pairs):
        version = versions[(annotation_id, revision)]
        image_id, iscrowd = owners[annotation_id]
        if version.deleted or image_id not in image_ids:
            continue  # a saved deletion, or an image outside the requested split
        chosen.append(
            ExportAnnotation(annotation_id, revision, image_id, version.concept_id, rle_from_json(version.rle),
                             json.loads(version.bbox), iscrowd, version.source, version.score)
        )
    return chosen


def load_export_data(
    engine: Engine, project_id: int, snapshot: Iterable | None = None, split: str | None = None,
    include_proposals: bool = False,
) -> ExportData:
    """Concepts, images (optionally one split) and the annotations to export, read in one session."""
    if split not in (None, "train", "val"):
        raise ExportError(f"split must be 'train', 'val' or None, got {split!r}")
    with read_session(engine) as session:
        concepts = list(session.exec(select(Concept).where(Concept.project_id == project_id).order_by(Concept.id)))
        image_query = select(Image).where(Image.project_id == project_id).order_by(Image.id)
        if split is not None:
            image_query = image_query.where(Image.split == split)
        images = list(session.exec(image_query))
        image_ids = {image.id for image in images}
        if snapshot is not None:
            chosen = _snapshot_annotations(session, project_id, image_ids, snapshot)
        else:
            wanted = trained_annotations(project_id)
            if include_proposals:
                wanted = [Image.project_id == project_id, Annotation.deleted == False]  # noqa: E712
            query = select(Annotation).join(Image, Image.id == Annotation.image_id).where(*wanted).order_by(Annotation.id)
            chosen = [
                ExportAnnotation(row.id, row.revision, row.image_id, row.concept_id, rle_from_json(row.rle),
                                 json.loads(row.bbox), row.iscrowd, row.source, row.score)
                for row in session.exec(query)
                if row.image_id in image_ids
            ]
    by_image: dict[int, list[ExportAnnotation]] = {image.id: [] for image in images}
    for annotation in chosen:
        by_image[annotation.image_id].append(annotation)
    return ExportData(concepts, images, by_image)


def place_image(media_dir: Path | str, image: Image, destination: Path) -> None:
    """Hard-link the stored PNG to `destination` (a copy when linking fails, e.g. across devices)."""
    source = media_path(media_dir, image.path)
    if not source.is_file():
        raise ExportError(
            f"image {image.id} ({image.original_name}): its file {image.path} is missing from the media folder"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.unlink(missing_ok=True)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def kept_ids(rows: Sequence, source_id: str) -> dict[int, int]:
    """Store id -> exported id: the row's `source_id` (its COCO id) when set and not claimed by an
    earlier row, else its store id when free, else the next id above all of them."""
    chosen: dict[int, int] = {}
    taken: set[int] = set()
    for row in rows:
        coco_id = getattr(row, source_id)
        if coco_id is not None and coco_id not in taken:
            chosen[row.id] = coco_id
            taken.add(coco_id)
    next_free = max(taken | {row.id for row in rows}, default=0) + 1
    for row in rows:
        if row.id in chosen:
            continue
        if row.id not in taken:
            chosen[row.id] = row.id
        else:
            chosen[row.id], next_free = next_free, next_free + 1
        taken.add(chosen[row.id])
    return chosen


def safe_relative_name(name: str) -> str:
    """A stored name as a relative posix path inside the export: no drive, root, '.', '..', leading dots
    (importers skip hidden files) or control characters."""
    text = re.sub(r"[\x00-\x1f\x7f]", "", name.replace("\\", "/"))
    text = re.sub(r"^[A-Za-z]:", "", text)
    parts = (part.lstrip(".") for part in PurePosixPath(text).parts if part != "/")  # no hidden files either
    return "/".join(part for part in parts if part)


def export_file_names(images: Sequence[Image], keep_folders: bool = True) -> dict[int, str]:
    """Image id -> the file name it is exported under: its source name (with its folders, or
    only the base name) as .png; "<id>.png" without one; "<stem>-<id>.png" on a clash."""
    names: dict[int, str] = {}
    used: set[str] = set()
    for image in images:
        relative = safe_relative_name(image.original_name or "")
        if not keep_folders:
            relative = PurePosixPath(relative).name if relative else ""
        path = PurePosixPath(relative) if relative and PurePosixPath(relative).stem else PurePosixPath(f"{image.id}.png")
        path = path.with_suffix(".png") if path.suffix.lower() != ".png" else path
        if str(path).lower() in used:
            path = path.with_name(f"{path.stem}-{image.id}.png")
        names[image.id] = str(path)
        used.add(str(path).lower())
    return names


def require_empty(dest: Path, export_format: str) -> None:
    """Folder-scanning formats would also pick up files left by an earlier export."""
    if dest.exists() and any(dest.iterdir()):
        raise ExportError(f"{dest} is not empty; a {export_format} export needs an empty or new folder")
