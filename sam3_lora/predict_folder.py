"""Proposals for a whole folder or COCO file of images, written as one COCO file with scores:
`sam3-lora predict --folder DIR` / `--coco FILE --images DIR`.

    images (sorted file names of DIR, or the COCO file's `images`, ids kept)
      -> batches of `batch` images -> predict_batch.propose_batch (one backbone pass per batch,
         every phrase per image)
      -> {"images", "categories", "annotations"}: one annotation per instance with
         segmentation (compressed RLE), bbox [x, y, w, h], area, score, iscrowd 0

Categories: the phrases in the given order (ids 1..n), or with a COCO file its categories
(ids kept; phrases default to their names). Each image is opened when its batch runs, so
memory holds one batch; an unreadable image stops the run with its name and the reason.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from sam3_lora.predict import Instance
from sam3_lora.predict_batch import propose_batch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageItem:
    """One image to propose for: its COCO id, its file_name as written, and where it is."""

    image_id: int
    file_name: str
    path: Path


def folder_items(folder: str | Path) -> list[ImageItem]:
    """The images of `folder` (not recursive), by file name; ids 1..n."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"image folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return [ImageItem(number, path.name, path) for number, path in enumerate(paths, start=1)]


def coco_items(coco_json: str | Path, images_dir: str | Path) -> tuple[list[ImageItem], list[dict]]:
    """(the COCO file's images, found under images_dir by file_name, ids kept; its categories)."""
    coco_json, images_dir = Path(coco_json), Path(images_dir)
    if not coco_json.is_file():
        raise FileNotFoundError(f"COCO file {coco_json} not found")
    try:
        data = json.loads(coco_json.read_text())
        images, categories = data["images"], data.get("categories", [])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read COCO file {coco_json}: {type(error).__name__}: {error}") from None
    items = []
    for image in images:
        path = images_dir / image["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image {image['file_name']!r} of {coco_json.name} not found in {images_dir}")
        items.append(ImageItem(int(image["id"]), image["file_name"], path))
    return items, [{"id": int(c["id"]), "name": str(c["name"])} for c in categories]


def _annotation(number: int, image_id: int, category_id: int, instance: Instance) -> dict:
    rle = mask_utils.encode(np.asfortranarray(instance.mask.astype(np.uint8)))
    x0, y0, x1, y1 = instance.box
    return {"id": number, "image_id": image_id, "category_id": category_id,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            "area": float(mask_utils.area(rle)), "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0,
            "score": instance.score}


def _open(item: ImageItem) -> np.ndarray:
    try:
        with Image.open(item.path) as image:
            return np.array(image.convert("RGB"))
    except OSError as error:
        raise ValueError(f"image {item.file_name}: cannot be read ({error})") from None


def predict_to_coco(
    model: torch.nn.Module, tokenizer, items: Sequence[ImageItem], categories: Sequence[dict],
    score_threshold: float = 0.5, batch: int = 4, on_batch: Callable[[int], None] | None = None,
) -> dict:
    """COCO proposals (module docstring) of every phrase (= category name) on every item; on_batch(images done)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not categories:
        raise ValueError("no phrase to look for: give --prompt (or a COCO file with categories)")
    phrases = [c["name"] for c in categories]
    images, annotations = [], []
    for start in range(0, len(items), batch):
        chunk = list(items[start:start + batch])
        pixels = [_open(item) for item in chunk]
        found = propose_batch(model, tokenizer, pixels, phrases, score_threshold=score_threshold)
        for item, array, proposals in zip(chunk, pixels, found):
            images.append({"id": item.image_id, "file_name": item.file_name,
                           "width": int(array.shape[1]), "height": int(array.shape[0])})
            for category, instances in zip(categories, proposals.instances):
                annotations.extend(_annotation(len(annotations) + 1, item.image_id, category["id"], instance)
                                   for instance in instances if instance.mask.any())
        if on_batch is not None:
            on_batch(len(chunk))
    return {"images": images, "categories": list(categories), "annotations": annotations}
