"""A small synthetic COCO dataset of coloured shapes, for tests and the offline demo.

Each concept is one shape drawn in one colour (a small per-instance jitter), on a
muted textured background (noise or stripes), so "circle" vs "square" is learnable
from shape and colour alone. Masks are the exact drawn pixels (evaluated at pixel
centres, no anti-aliasing); a later shape paints over an earlier one and cuts its
mask, and a placement that would hide more than MAX_HIDDEN of an earlier shape is
re-drawn, so every instance stays clearly visible. About one image in eight has no
shape at all (negatives only). 40 images of 224 px take well under a second.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# Shape radius as a fraction of the image side; at least MIN_RADIUS_PX pixels.
RADIUS_RANGE = (0.08, 0.18)
MIN_RADIUS_PX = 3
MAX_HIDDEN = 0.4  # largest share of an earlier shape a later one may cover
PLACEMENT_TRIES = 20
# One saturated colour per concept (by position); backgrounds stay muted, so they never look like a shape.
PALETTE = [(230, 40, 40), (40, 200, 60), (50, 80, 235), (240, 210, 30), (210, 40, 220), (30, 210, 220)]


def _circle(x, y, r):
    return x * x + y * y <= r * r


def _square(x, y, r):
    return (np.abs(x) <= r * 0.85) & (np.abs(y) <= r * 0.85)


def _triangle(x, y, r):
    # Apex at the top (y = -r), base at y = +r, half-width growing linearly from 0 to r.
    return (y >= -r) & (y <= r) & (np.abs(x) <= (y + r) / 2.0)


def _diamond(x, y, r):
    return np.abs(x) + np.abs(y) <= r


def _cross(x, y, r):
    arm = r / 3.0
    return ((np.abs(x) <= arm) & (np.abs(y) <= r)) | ((np.abs(y) <= arm) & (np.abs(x) <= r))


def _ring(x, y, r):
    distance2 = x * x + y * y
    return (distance2 <= r * r) & (distance2 >= (0.55 * r) ** 2)


SHAPES = {"circle": _circle, "square": _square, "triangle": _triangle, "diamond": _diamond, "cross": _cross, "ring": _ring}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted texture [size,size,3] uint8: grey-ish noise, or two-tone stripes at a random angle."""
    base = rng.uniform(90, 160) + rng.uniform(-15, 15, size=3)
    if rng.random() < 0.5:
        image = base + rng.normal(0, 18, size=(size, size, 3))
    else:
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
        yy, xx = np.mgrid[0:size, 0:size]
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        image = base + 25 * np.sign(np.sin(2 * np.pi * phase))[..., None] + rng.normal(0, 6, size=(size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _place_shapes(rng, size: int, concept_ids: list[int], concepts: tuple[str, ...]) -> list[tuple[int, np.ndarray]]:
    """Draw masks for the given concepts in order; returns (concept index, visible mask) pairs."""
    centres = np.arange(size) + 0.5  # pixel centres
    placed: list[tuple[int, np.ndarray, int]] = []  # (concept, visible mask, full area)
    for concept in concept_ids:
        for _ in range(PLACEMENT_TRIES):
            radius = max(MIN_RADIUS_PX, rng.uniform(*RADIUS_RANGE) * size)
            cx, cy = rng.uniform(radius, size - radius, size=2)
            mask = SHAPES[concepts[concept]](centres[None, :] - cx, centres[:, None] - cy, radius)
            if mask.sum() == 0:
                continue
            if all((visible & ~mask).sum() >= (1 - MAX_HIDDEN) * area for _, visible, area in placed):
                placed = [(c, visible & ~mask, area) for c, visible, area in placed]
                placed.append((concept, mask, int(mask.sum())))
                break
    return [(concept, visible) for concept, visible, _ in placed]


def write_synthetic_coco(
    folder: str | Path,
    num_images: int = 40,
    image_size: int = 224,
    concepts: tuple[str, ...] = ("circle", "square", "triangle"),
    max_instances: int = 3,
    seed: int = 0,
) -> Path:
    """Write folder/images/NNNNNN.png and folder/annotations.json (COCO, RLE masks); return the json path.

    Images have 1..max_instances shapes of random concepts, except max(1, n // 8)
    random images with none (when num_images >= 2). Same arguments -> same bytes.
    Supported concepts: the keys of SHAPES, at most len(PALETTE) of them.
    """
    concepts = tuple(concepts)
    unknown = [name for name in concepts if name not in SHAPES]
    if unknown or not concepts or len(set(concepts)) != len(concepts) or len(concepts) > len(PALETTE):
        raise ValueError(f"concepts must be 1..{len(PALETTE)} distinct names from {sorted(SHAPES)}, got {list(concepts)}")
    if num_images < 1 or max_instances < 1 or image_size < 32:
        raise ValueError(f"need num_images >= 1, max_instances >= 1, image_size >= 32; got {num_images}, "
                         f"{max_instances}, {image_size}")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_instances + 1, size=num_images)
    if num_images >= 2:
        counts[rng.choice(num_images, size=max(1, num_images // 8), replace=False)] = 0

    images, annotations = [], []
    for index in range(num_images):
        image_id = index + 1
        pixels = _background(rng, image_size)
        concept_ids = rng.integers(0, len(concepts), size=int(counts[index])).tolist()
        # Visible masks are disjoint (later shapes cut earlier ones), so painting them in any
        # order gives the final image, and each mask is exactly the pixels of its colour.
        for concept, mask in _place_shapes(rng, image_size, concept_ids, concepts):
            colour = np.clip(np.array(PALETTE[concept]) + rng.integers(-20, 21, size=3), 0, 255)
            pixels[mask] = colour.astype(np.uint8)
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": concept + 1,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0,
            })
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(folder / "images" / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})

    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(concepts)]
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
