"""Semantic PNG-mask import: a label map + class masks (+ optional instance masks) + images,
in the Pascal VOC / CVAT "Segmentation mask" layout that png_mask_export.py writes.

labelmap.txt: one `name:r,g,b::` line per label (CVAT), line i = index i; `#` lines are
comments; a line with only a name is allowed (index by order). The first label is the
background. SegmentationClass/<stem>.png holds label indices (palette or greyscale
PNG) or label colours (RGB, matched through the label map); 255 is "ignore".
Its image is the upload's other file with the same stem (JPEGImages/ first).

Instances: with SegmentationObject/<stem>.png, each object value (not 0, not 255) is
one instance, labelled with the class most of its pixels carry. Without it, a class
mask cannot tell touching objects apart, so each 8-connected region of a class becomes
one instance (said in the report). Pixels at 255 ("ignore", e.g. our exported crowds)
have no class and are not imported (counted in the report). A mask of the raw size of
an EXIF-rotated image is turned with it; any other size mismatch skips that mask.
Splits come from ImageSets/Segmentation/{train,val}.txt when present.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image as PILImage
from scipy import ndimage
from sqlalchemy import Engine

from app.store.annotations import check_mask
from app.store.archive import FileSource
from app.store.image_decode import DEFAULT_MAX_PIXELS, DecodedImage, to_upright
from app.store.import_batches import (
    BatchWriter, ConceptSource, ImportReport, PendingAnnotation, insert_batch, mark_reviewed, store_images,
)
from app.store.masks import mask_to_rle
from app.store.names import clean_name
from app.store.uploads import ImageBatch
from app.store.yolo_import import IMAGE_SUFFIXES

IGNORE = 255
MASK_FOLDERS = ("SegmentationClass", "SegmentationObject")
Progress = Callable[[int, int], None]


def read_labelmap(text: str, report: ImportReport, label: str) -> list[tuple[str, tuple[int, int, int] | None]]:
    """labelmap.txt -> [(name, colour or None)] by index (index 0 = background)."""
    labels = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.partition(":")
        color = None
        channels = rest.split(":")[0].split(",") if rest else []
        if len(channels) == 3:
            try:
                color = tuple(int(c) for c in channels)
            except ValueError:
                report.skipped.append((f"{label} line {number}", f"colour {rest.split(':')[0]!r} is not r,g,b"))
        labels.append((name.strip(), color))
    return labels


def _label_indices(data: bytes, colors: dict[tuple[int, int, int], int]) -> np.ndarray:
    """A mask PNG -> label indices [H, W] (palette/greyscale as they are, RGB through `colors`; unknown -> 255)."""
    with PILImage.open(io.BytesIO(data), formats=["PNG"]) as image:
        if image.mode in ("P", "L", "I", "I;16"):
            return np.asarray(image).astype(np.int64)
        rgb = np.asarray(image.convert("RGB")).astype(np.int64)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    indices = np.full(packed.shape, IGNORE, dtype=np.int64)
    for (r, g, b), index in colors.items():
        indices[packed == ((r << 16) | (g << 8) | b)] = index
    return indices


def _read_mask(source: FileSource, name: str, colors, decoded: DecodedImage) -> np.ndarray | str:
    """The mask as label indices at the stored image size, or why not."""
    data = source.read(name)
    if isinstance(data, str):
        return data
    try:
        values = _label_indices(data, colors)
    except Exception as error:  # not a PNG, truncated, ...
        return f"mask is not a readable PNG ({type(error).__name__}: {error})"
    height, width = values.shape
    if (width, height) == (decoded.width, decoded.height):
        return values
    if decoded.orientation != 1 and (width, height) == (decoded.raw_width, decoded.raw_height):
        return np.asarray(to_upright(PILImage.fromarray(values.astype(np.int32), mode="I"), decoded.orientation))
    return f"mask is {width}x{height} but its image is {decoded.width}x{decoded.height}"


def _instances(classes: np.ndarray, objects: np.ndarray | None) -> tuple[list[tuple[int, np.ndarray]], int]:
    """[(label index, mask)] of the image, and the number of ignored (255) pixels."""
    ignored = int((classes == IGNORE).sum())
    found = []
    if objects is not None:
        for value in np.unique(objects):
            if value in (0, IGNORE):
                continue
            region = objects == value
            labels = classes[region]
            labels = labels[(labels != 0) & (labels != IGNORE)]
            if labels.size:
                found.append((int(np.bincount(labels).argmax()), region))
        return found, ignored
    for value in np.unique(classes):
        if value in (0, IGNORE):
            continue
        regions, count = ndimage.label(classes == value, structure=np.ones((3, 3), dtype=bool))
        found += [(int(value), regions == k) for k in range(1, count + 1)]
    return found, ignored


def _splits(source: FileSource) -> dict[str, str]:
    splits = {}
    for split in ("train", "val"):
        name = next((n for n in source.names if n.endswith(f"ImageSets/Segmentation/{split}.txt")), None)
        text = source.read(name) if name else b""
        if isinstance(text, bytes):
            splits.update((stem.strip(), split) for stem in text.decode("utf-8", "replace").splitlines() if stem.strip())
    return splits


def import_png_masks(
    engine: Engine, media_dir: Path | str, project_id: int, source: FileSource,
    max_pixels: int = DEFAULT_MAX_PIXELS, on_progress: Progress | None = None,
) -> ImportReport:
    """Import the layout above from `source` (archive.open_source over a zip or a folder)."""
    report = ImportReport()
    report.skipped.extend(source.refused)
    labelmap_name = next((n for n in source.names if PurePosixPath(n).name.lower() == "labelmap.txt"), None)
    raw = source.read(labelmap_name) if labelmap_name else "no labelmap.txt in the upload (name:r,g,b:: per line)"
    if isinstance(raw, str):
        report.skipped.append((labelmap_name or "labelmap.txt", raw))
        return report
    labels = read_labelmap(raw.decode("utf-8", "replace"), report, labelmap_name)
    concepts: dict[int, ConceptSource] = {}
    for index, (name, _) in enumerate(labels[1:], start=1):
        try:
            concepts[index] = ConceptSource(clean_name(name, "label name"))
        except ValueError as error:
            report.skipped.append((f"label {index}", str(error)))
    colors = {color: index for index, (_, color) in enumerate(labels) if color is not None}
    insert_batch(engine, project_id, [], report, list(concepts.values()))
    class_masks = sorted(n for n in source.names if PurePosixPath(n).parent.name == "SegmentationClass")
    by_stem: dict[str, list[str]] = {}
    for name in source.names:
        path = PurePosixPath(name)
        if path.suffix.lower() in IMAGE_SUFFIXES and not set(path.parts) & set(MASK_FOLDERS):
            by_stem.setdefault(path.stem, []).append(name)
    splits, writer, batch = _splits(source), BatchWriter(engine, project_id, report), ImageBatch(engine, media_dir,
                                                                                                project_id)
    listed, counts = [], {"ignored": 0, "without_objects": 0}

    def add_instances(image_id: int, decoded: DecodedImage, mask_name: str) -> None:
        listed.append(image_id)
        stem = PurePosixPath(mask_name).stem
        classes = _read_mask(source, mask_name, colors, decoded)
        object_name = str(PurePosixPath(mask_name).parent.parent / "SegmentationObject" / f"{stem}.png")
        objects = _read_mask(source, object_name, {}, decoded) if object_name in source.sizes else None
        for name, problem in ((mask_name, classes), (object_name, objects)):
            if isinstance(problem, str):
                report.skipped.append((name, problem))
        if isinstance(classes, str):
            return
        counts["without_objects"] += objects is None
        found, ignored_pixels = _instances(classes, None if isinstance(objects, str) else objects)
        counts["ignored"] += ignored_pixels
        for label_index, region in found:
            if label_index not in concepts:
                report.skipped.append((f"{mask_name} label {label_index}", "label index not in labelmap.txt"))
                continue
            writer.add(PendingAnnotation(image_id, concepts[label_index], check_mask(mask_to_rle(region)), False))

    items = []
    for mask_name in class_masks:
        stem = PurePosixPath(mask_name).stem
        candidates = sorted(by_stem.get(stem, []), key=lambda n: "JPEGImages/" not in n)
        if not candidates:
            report.skipped.append((mask_name, "no image with this name in the upload"))
            continue
        items.append((candidates[0], splits.get(stem),
                      lambda image_id, decoded, mask_name=mask_name: add_instances(image_id, decoded, mask_name)))
    if not store_images(batch, source, items, report, max_pixels, on_progress):
        return report
    writer.flush()
    mark_reviewed(engine, listed)
    if counts["without_objects"]:
        report.notes.append(f"{counts['without_objects']} image(s) had no SegmentationObject mask: each connected region "
                            "of a label became one instance")
    if counts["ignored"]:
        report.notes.append(f"{counts['ignored']:,} pixel(s) marked 255 (ignore / crowd) have no label and were not imported")
    return report
