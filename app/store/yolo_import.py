"""YOLO-seg dataset import (Ultralytics layout): data.yaml + images/<split>/... + labels/<split>/...

`names` in data.yaml (a list, or {index: name}) become concepts in that order. Each
image's label file is found as Ultralytics finds it (`img2label_paths`: the last
"/images/" of its path becomes "/labels/", the suffix ".txt"). A label row is one
object: `class x1 y1 x2 y2 ...` (a polygon; parts joined by Ultralytics' converter
rasterise back to their union) or `class cx cy w h` (a box), coordinates divided by
the image's size. Ultralytics measures that size with the EXIF orientation applied,
as our stored pixels are, so rows need no turning. Images under a `val`, `valid` or
`validation` folder go to the val split, under `train` to train. An image without a
label file is a negative. Every unusable row is skipped with its file, line and reason.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import yaml
from sqlalchemy import Engine

from app.store.annotations import check_mask
from app.store.archive import FileSource
from app.store.image_decode import DEFAULT_MAX_PIXELS
from app.store.import_batches import (
    BatchWriter, ConceptSource, ImportReport, PendingAnnotation, SkipAnnotation, insert_batch, mark_reviewed,
    store_images,
)
from app.store.masks import box_to_mask, mask_to_rle, polygons_to_rle, rle_area
from app.store.names import clean_name
from app.store.uploads import ImageBatch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VAL_FOLDERS = ("val", "valid", "validation")
Progress = Callable[[int, int], None]


def label_path(image_name: str) -> str:
    """Ultralytics' rule: 'a/images/train/x.jpg' -> 'a/labels/train/x.txt'."""
    head, sep, tail = f"/{image_name}".rpartition("/images/")
    return str(PurePosixPath(f"{head}/labels/{tail}"[1:]).with_suffix(".txt")) if sep else ""


def split_of(name: str) -> str | None:
    parts = [part.lower() for part in PurePosixPath(name).parts[:-1]]
    if any(part in VAL_FOLDERS for part in parts):
        return "val"
    return "train" if "train" in parts else None


def read_names(source: FileSource, report: ImportReport) -> dict[int, ConceptSource] | None:
    """data.yaml's `names` -> {class index: ConceptSource}; None (with the reason reported) when unusable."""
    yamls = sorted((n for n in source.names if PurePosixPath(n).name.lower() in ("data.yaml", "data.yml")),
                   key=lambda n: (n.count("/"), n))
    if not yamls:
        report.skipped.append(("data.yaml", "no data.yaml in the upload; a YOLO dataset needs one with `names`"))
        return None
    raw = source.read(yamls[0])
    try:
        config = yaml.safe_load(raw) if isinstance(raw, bytes) else None
    except yaml.YAMLError as error:
        report.skipped.append((yamls[0], f"not valid YAML ({str(error).splitlines()[0]})"))
        return None
    names = config.get("names") if isinstance(config, dict) else None
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        report.skipped.append((yamls[0], raw if isinstance(raw, str) else "has no `names` list or mapping"))
        return None
    classes = {}
    for index, name in names.items():
        try:
            classes[int(index)] = ConceptSource(clean_name(str(name), "class name"))
        except ValueError as error:
            report.skipped.append((f"class {index}", str(error)))
    return classes


def parse_row(line: str, classes: dict[int, ConceptSource], height: int, width: int):
    """One label row -> (ConceptSource, checked mask); SkipAnnotation with the reason."""
    fields = line.split()
    try:
        class_index, values = int(fields[0]), [float(v) for v in fields[1:]]
    except ValueError:
        raise SkipAnnotation("not numbers") from None
    if class_index not in classes:
        raise SkipAnnotation(f"class {class_index} is not in data.yaml's names")
    if not all(math.isfinite(v) for v in values):
        raise SkipAnnotation("non-finite coordinate")
    if len(values) == 4:
        cx, cy, w, h = values
        rle = mask_to_rle(box_to_mask([(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height],
                                      height, width))
    elif len(values) >= 6 and len(values) % 2 == 0:
        ring = [v * (width if i % 2 == 0 else height) for i, v in enumerate(values)]
        try:
            rle = polygons_to_rle([ring], height, width)
        except ValueError as error:
            raise SkipAnnotation(str(error)) from None
    else:
        raise SkipAnnotation(f"{len(values)} coordinates: a polygon needs an even number, at least 6; a box 4")
    if rle_area(rle) == 0:
        raise SkipAnnotation("covers no pixel of the image (zero area)")
    return classes[class_index], check_mask(rle)


def import_yolo_seg(
    engine: Engine, media_dir: Path | str, project_id: int, source: FileSource,
    max_pixels: int = DEFAULT_MAX_PIXELS, on_progress: Progress | None = None,
) -> ImportReport:
    """Import a YOLO-seg dataset from `source` (archive.open_source over a zip or a folder)."""
    report = ImportReport()
    report.skipped.extend(source.refused)
    classes = read_names(source, report)
    if classes is None:
        return report
    insert_batch(engine, project_id, [], report, [classes[index] for index in sorted(classes)])
    images = [name for name in source.names
              if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES and label_path(name)]
    listed: list[int] = []
    writer = BatchWriter(engine, project_id, report)
    batch = ImageBatch(engine, media_dir, project_id)

    def add_rows(image_id: int, decoded, labels: str) -> None:
        listed.append(image_id)
        text = source.read(labels) if labels in source.sizes else b""
        if isinstance(text, str):
            report.skipped.append((labels, text))
            return
        for number, line in enumerate(text.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                concept, mask = parse_row(line, classes, decoded.height, decoded.width)
            except (SkipAnnotation, ValueError) as skip:
                report.skipped.append((f"{labels} line {number}", str(skip)))
                continue
            writer.add(PendingAnnotation(image_id, concept, mask, iscrowd=False))

    items = [(name, split_of(name), lambda image_id, decoded, labels=label_path(name): add_rows(image_id, decoded, labels))
             for name in images]
    used_labels = {label_path(name) for name in images}
    if not store_images(batch, source, items, report, max_pixels, on_progress):
        return report
    writer.flush()
    mark_reviewed(engine, listed)
    for name in source.names:
        if name.lower().endswith(".txt") and "/labels/" in f"/{name}" and name not in used_labels:
            report.skipped.append((name, "label file without an image; not imported"))
    return report
