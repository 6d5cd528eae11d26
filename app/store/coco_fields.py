"""Reading one COCO field at a time, strictly: iscrowd, categories, an image's
orientation against its declared size, an annotation's mask.

Each reader either returns the value or raises with the reason (SkipAnnotation for
annotations, ValueError otherwise); the caller records the reason and goes on.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage

from app.store.annotations import CheckedMask, check_mask
from app.store.image_decode import DecodedImage, to_upright
from app.store.import_batches import ConceptSource, SkipAnnotation
from app.store.masks import coco_shape_to_rle, mask_to_rle, rle_area, rle_to_mask
from app.store.names import clean_name

_TRUE, _FALSE = ("1", "true"), ("0", "false")
ORIENTATION_WORDS = {
    2: "mirrored left-right", 3: "rotated 180°", 4: "mirrored top-bottom", 5: "mirrored along its diagonal",
    6: "rotated 90° clockwise", 7: "mirrored along its anti-diagonal", 8: "rotated 90° counter-clockwise",
}
STRIP_TAG = "exiftool -Orientation=1 -n FILE"
APPLY_TAG = "exiftran -ai FILE, or mogrify -auto-orient FILE"


def parse_iscrowd(value: Any) -> bool:
    """0/1, false/true, and their strings (any case) -> bool; absent (None) -> False.

    Anything else is refused by name: bool("false") is True, so reading a Label
    Studio export's "iscrowd": "false" with bool() made every annotation a crowd.
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise SkipAnnotation(f"iscrowd {value!r} is not 0, 1, true or false")


def storable_id(value: Any) -> int | None:
    """A COCO id as the integer column keeps it, or None (text ids, and ids outside PostgreSQL's
    INTEGER range, are not kept: the export then uses the studio's id)."""
    if isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31:
        return value
    return None


def category_table(categories: list[Any], used_ids: set) -> tuple[dict[Any, ConceptSource | str], list[str]]:
    """COCO category id -> its ConceptSource, or the reason it was not imported; plus notes.

    A Roboflow export lists the dataset itself as category 0 ("supercategory": "none"),
    the supercategory of every real class, and no annotation uses it: such a group is
    not a concept (it would become class 0 of a YOLO export); the classes keep it as
    their supercategory. A category that annotations do use is always a concept.
    """
    table: dict[Any, ConceptSource | str] = {}
    supercategories = {c.get("supercategory") for c in categories if isinstance(c, dict)}
    notes = []
    for index, category in enumerate(categories):
        if not isinstance(category, dict) or "id" not in category:
            table[f"#{index}"] = "category without an id"
            continue
        category_id = category["id"]
        try:
            hash(category_id)
        except TypeError:
            table[f"#{index}"] = f"category id {category_id!r} is not a number or text"
            continue
        if not isinstance(category.get("name"), str) or not category["name"].strip():
            table[category_id] = "category without a name"
            continue
        try:
            name = clean_name(category["name"], "category name")
            supercategory = category.get("supercategory")
            supercategory = clean_name(supercategory, "supercategory") if isinstance(supercategory, str) and \
                supercategory.strip() and supercategory.strip().lower() != "none" else ""
        except ValueError as error:
            table[category_id] = str(error)
            continue
        if category_id not in used_ids and category["name"] in supercategories and not supercategory:
            table[category_id] = "dataset-level group"
            notes.append(f"category {category_id} {name!r} is the dataset-level group of the others (their "
                         "supercategory, as Roboflow writes it) and no annotation uses it: kept as their "
                         "supercategory, not made a concept")
            continue
        table[category_id] = ConceptSource(name, storable_id(category_id), supercategory)
    return table, notes


@dataclass(frozen=True, slots=True)  # one per image of an import: kept small
class Placement:
    """Where an image's annotations go: the stored (upright) size, and the EXIF orientation to
    turn them by when they were drawn on the raw pixels (1 = as they are)."""

    height: int
    width: int
    turn: int = 1


def placement(decoded: DecodedImage, declared: tuple[Any, Any], name: str) -> Placement | str:
    """The one orientation rule: annotations are in the orientation whose size the COCO file
    declares. Returns the Placement, or why the image's annotations cannot be placed; a
    reason starting with "refused:" means the image itself is not imported (ambiguous)."""
    width, height = decoded.width, decoded.height
    has_size = all(isinstance(v, int) and not isinstance(v, bool) for v in declared)
    orientation = decoded.orientation
    if orientation != 1:
        turned = ORIENTATION_WORDS[orientation]
        raw = (decoded.raw_width, decoded.raw_height)
        if not has_size:
            return (f"refused: it has EXIF orientation {orientation} ({turned}) and the COCO file gives no width "
                    "and height for it, so it cannot tell whether the annotations are on the pixels as stored or as "
                    f"shown; add its width and height to the image entry, or remove the tag ({STRIP_TAG}) or apply it "
                    f"({APPLY_TAG}) to match how it was labelled")
        if raw == (width, height):
            return (f"refused: it has EXIF orientation {orientation} ({turned}), which keeps its size "
                    f"{width}x{height}, so the size in the COCO file cannot tell whether the annotations are on the "
                    f"pixels as stored or as shown; remove the tag ({STRIP_TAG}) or apply it ({APPLY_TAG}) to match "
                    "how it was labelled, then import again")
        if tuple(declared) == raw:
            return Placement(height, width, turn=orientation)
    if has_size and tuple(declared) != (width, height):
        return f"image {name} is {width}x{height} but the COCO file says {declared[0]}x{declared[1]}"
    return Placement(height, width)


def annotation_mask(annotation: dict[str, Any], place: Placement) -> tuple[CheckedMask, str]:
    """COCO annotation -> (checked mask at the stored image size, kind) with kind rle | polygon | box
    (+ "-clipped" when part of it lay outside the image). Raises SkipAnnotation with the reason.

    With place.turn != 1 the shape is read at the raw size and turned like its image.
    """
    height, width = (place.width, place.height) if place.turn in (5, 6, 7, 8) else (place.height, place.width)
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
    if place.turn != 1:
        raw = rle_to_mask(json.loads(mask.rle_json)).astype(np.uint8)
        upright = np.asarray(to_upright(PILImage.fromarray(raw * 255, mode="L"), place.turn)) > 0
        mask = check_mask(mask_to_rle(upright))
    return mask, kind

