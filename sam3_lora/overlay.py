"""Render predicted instances over an image, and write them as COCO results.

overlay = image * (1 - 0.45 * mask_i) + colour_i * 0.45 * mask_i, box outlines and
"phrase score" labels on top; instances are drawn lowest score first.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from sam3_lora.predict import Instance

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
ALPHA = 0.45


def draw_overlay(image: Image.Image, instances: list[Instance]) -> Image.Image:
    """RGB image with each instance's mask tinted, its box outlined and its score written."""
    canvas = np.asarray(image.convert("RGB")).astype(np.float32)
    ordered = sorted(enumerate(instances), key=lambda pair: pair[1].score)
    for index, instance in ordered:
        colour = np.array(PALETTE[index % len(PALETTE)], dtype=np.float32)
        mask = instance.mask[..., None]
        canvas = np.where(mask, canvas * (1 - ALPHA) + colour * ALPHA, canvas)
    result = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    for index, instance in ordered:
        colour = PALETTE[index % len(PALETTE)]
        draw.rectangle(instance.box, outline=colour, width=2)
        draw.text((instance.box[0] + 3, instance.box[1] + 2), f"{instance.phrase} {instance.score:.2f}", fill=colour)
    return result


def instances_to_coco(instances: list[Instance], size: tuple[int, int], file_name: str) -> dict:
    """{"images": [...], "categories": [...], "annotations": [...]} with RLE masks; size = (width, height)."""
    phrases = sorted({instance.phrase for instance in instances})
    category_ids = {phrase: i + 1 for i, phrase in enumerate(phrases)}
    annotations = []
    for number, instance in enumerate(instances, start=1):
        rle = mask_utils.encode(np.asfortranarray(instance.mask.astype(np.uint8)))
        x0, y0, x1, y1 = instance.box
        annotations.append({"id": number, "image_id": 1, "category_id": category_ids[instance.phrase],
                            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                            "area": float(mask_utils.area(rle)), "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "iscrowd": 0, "score": instance.score})
    return {"images": [{"id": 1, "file_name": file_name, "width": size[0], "height": size[1]}],
            "categories": [{"id": i, "name": p} for p, i in category_ids.items()], "annotations": annotations}
