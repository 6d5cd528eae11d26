"""Exports of a project's labels: COCO (the training format), YOLO-seg and PNG masks.

All three export every image of the project (or of one split), annotated or not:
images without annotations are negatives for training. Annotations are either the
current non-deleted ones or, with `snapshot` = [(annotation_id, revision), ...],
exactly those saved versions read from AnnotationHistory, so a training job sees a
frozen dataset while people keep editing. Images are hard-linked from the media
store (copied when a link is impossible), always through media.media_path.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image as PILImage
from sqlalchemy import Engine
from sqlmodel import select

from app.store.dataset_stats import trained_annotations
from app.store.db import read_session
from app.store.masks import rle_area, rle_from_json, rle_to_mask
from app.store.media import media_path, write_atomically
from app.store.models import Annotation, AnnotationHistory, Concept, Image
from app.store.polygons import mask_to_polygons

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
            ExportAnnotation(annotation_id, revision, image_id, version.concept_id,
                             rle_from_json(version.rle), json.loads(version.bbox), iscrowd)
        )
    return chosen


def load_export_data(
    engine: Engine, project_id: int, snapshot: Iterable | None = None, split: str | None = None
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
            query = (
                select(Annotation)
                .join(Image, Image.id == Annotation.image_id)
                .where(Image.project_id == project_id, Annotation.deleted == False)  # noqa: E712
                .order_by(Annotation.id)
            )
            chosen = [
                ExportAnnotation(row.id, row.revision, row.image_id, row.concept_id,
                                 rle_from_json(row.rle), json.loads(row.bbox), row.iscrowd)
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


def _require_empty(dest: Path, export_format: str) -> None:
    """Folder-scanning formats would also pick up files left by an earlier export."""
    if dest.exists() and any(dest.iterdir()):
        raise ExportError(f"{dest} is not empty; a {export_format} export needs an empty or new folder")


def export_coco(
    engine: Engine,
    media_dir: Path | str,
    project_id: int,
    dest_dir: Path | str,
    snapshot: Iterable | None = None,
    split: str | None = None,
) -> Path:
    """Write dest_dir/images/<image id>.png and dest_dir/annotations.json; returns the json path.

    Categories are the project's concepts with id = concept id (stable across exports);
    annotation ids are the store's; masks are compressed RLE (exact round trip);
    area = mask pixel count, bbox = stored tight box. Extra keys pycocotools ignores:
    images carry split, status, original_name, sha256; annotations carry revision.
    """
    data = load_export_data(engine, project_id, snapshot, split)
    dest = Path(dest_dir)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    document = {
        "info": {"description": f"SAM3 LoRA Studio project {project_id}", "split": split or "all"},
        "licenses": [],
        "categories": [{"id": c.id, "name": c.name, "supercategory": "", "color": c.color} for c in data.concepts],
        "images": [],
        "annotations": [],
    }
    for image in data.images:
        file_name = f"{image.id}.png"
        place_image(media_dir, image, dest / "images" / file_name)
        document["images"].append(
            {"id": image.id, "file_name": file_name, "width": image.width, "height": image.height,
             "split": image.split, "status": image.status, "original_name": image.original_name, "sha256": image.sha256}
        )
        for annotation in data.annotations[image.id]:
            document["annotations"].append(
                {"id": annotation.id, "image_id": image.id, "category_id": annotation.concept_id,
                 "segmentation": annotation.rle, "area": float(rle_area(annotation.rle)), "bbox": annotation.bbox,
                 "iscrowd": int(annotation.iscrowd), "revision": annotation.revision}
            )
    json_path = dest / "annotations.json"
    write_atomically(json_path, json.dumps(document).encode("utf-8"))
    return json_path


def _yolo_lines(annotation: ExportAnnotation, class_index: int, width: int, height: int, tolerance: float) -> list[str]:
    """One `class x1 y1 x2 y2 ...` line per connected component; coordinates / (W, H) in [0, 1]."""
    lines = []
    for polygon in mask_to_polygons(rle_to_mask(annotation.rle), tolerance=tolerance):
        normalised = (polygon / np.array([width, height], dtype=float)).clip(0.0, 1.0)
        lines.append(" ".join([str(class_index)] + [f"{v:.6f}" for v in normalised.ravel()]))
    return lines


def export_yolo_seg(
    engine: Engine,
    media_dir: Path | str,
    project_id: int,
    dest_dir: Path | str,
    snapshot: Iterable | None = None,
    split: str | None = None,
    tolerance: float = 1.0,
) -> Path:
    """Ultralytics YOLO-seg layout; returns dest_dir/data.yaml.

    dest_dir must be empty or new (YOLO reads every file in the folders).
    images/<split>/<id>.png, labels/<split>/<id>.txt (empty for negatives), data.yaml
    with `names` {class index: concept name}; class index = rank of the concept id.
    Polygons: outer contour of each mask component, Douglas-Peucker at `tolerance` px
    (holes are not representable in YOLO-seg and are filled).
    """
    dest = Path(dest_dir)
    _require_empty(dest, "YOLO")
    data = load_export_data(engine, project_id, snapshot, split)
    class_of = {concept.id: index for index, concept in enumerate(data.concepts)}
    splits = [split] if split else ["train", "val"]
    for name in splits:
        (dest / "images" / name).mkdir(parents=True, exist_ok=True)
        (dest / "labels" / name).mkdir(parents=True, exist_ok=True)
    for image in data.images:
        place_image(media_dir, image, dest / "images" / image.split / f"{image.id}.png")
        lines = []
        for annotation in data.annotations[image.id]:
            lines += _yolo_lines(annotation, class_of[annotation.concept_id], image.width, image.height, tolerance)
        label_text = "".join(line + "\n" for line in lines)
        write_atomically(dest / "labels" / image.split / f"{image.id}.txt", label_text.encode("ascii"))
    config = {"path": str(dest.resolve()), "names": {index: c.name for index, c in enumerate(data.concepts)}}
    config.update({name: f"images/{name}" for name in splits})
    yaml_path = dest / "data.yaml"
    write_atomically(yaml_path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode("utf-8"))
    return yaml_path


def _label_png(values: np.ndarray, path: Path) -> None:
    """uint8 PNG when every value fits, else 16-bit ('I;16')."""
    dtype = np.uint8 if int(values.max(initial=0)) <= 255 else np.uint16
    buffer = PILImage.fromarray(values.astype(dtype))
    temp = path.with_name(f".tmp-{path.name}")
    buffer.save(temp, format="PNG")
    os.replace(temp, path)


def export_png_masks(
    engine: Engine,
    media_dir: Path | str,
    project_id: int,
    dest_dir: Path | str,
    snapshot: Iterable | None = None,
    split: str | None = None,
) -> Path:
    """Per image: images/<id>.png, instances/<id>.png, concepts/<id>.png; returns legend.json.

    dest_dir must be empty or new.
    instances: 0 = background, k = k-th instance of that image in the legend;
    concepts: 0 = background, i = concept with legend index i (rank of concept id + 1).
    Overlaps: instances are painted largest first, so a smaller one on top stays visible.
    """
    dest = Path(dest_dir)
    _require_empty(dest, "PNG mask")
    data = load_export_data(engine, project_id, snapshot, split)
    for folder in ("images", "instances", "concepts"):
        (dest / folder).mkdir(parents=True, exist_ok=True)
    concept_index = {concept.id: index for index, concept in enumerate(data.concepts, start=1)}
    legend = {
        "background": 0,
        "overlaps": "instances are painted largest first; a later (smaller) one wins shared pixels",
        "concepts": [
            {"index": concept_index[c.id], "concept_id": c.id, "name": c.name, "color": c.color} for c in data.concepts
        ],
        "images": {},
    }
    for image in data.images:
        file_name = f"{image.id}.png"
        place_image(media_dir, image, dest / "images" / file_name)
        instances = np.zeros((image.height, image.width), dtype=np.int64)
        concepts = np.zeros((image.height, image.width), dtype=np.int64)
        ordered = sorted(data.annotations[image.id], key=lambda a: (-rle_area(a.rle), a.id))
        entries = []
        for index, annotation in enumerate(ordered, start=1):
            mask = rle_to_mask(annotation.rle)
            instances[mask] = index
            concepts[mask] = concept_index[annotation.concept_id]
            entries.append({"index": index, "annotation_id": annotation.id, "revision": annotation.revision,
                            "concept_index": concept_index[annotation.concept_id], "iscrowd": annotation.iscrowd})
        _label_png(instances, dest / "instances" / file_name)
        _label_png(concepts, dest / "concepts" / file_name)
        legend["images"][file_name] = {"image_id": image.id, "split": image.split, "instances": entries}
    legend_path = dest / "legend.json"
    write_atomically(legend_path, json.dumps(legend, indent=1).encode("utf-8"))
    return legend_path
