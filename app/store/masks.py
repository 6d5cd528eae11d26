"""Instance masks as COCO RLE, the one mask format the store keeps.

A mask is `np.bool_ [H, W]`. An RLE is `{"size": [H, W], "counts": str}` with the
counts in pycocotools' compressed (LEB128-like) string form, so it is JSON-safe and
`Annotation.rle` holds `json.dumps(rle)`. Boxes are COCO `[x, y, w, h]` in pixels.

Untrusted RLEs are checked by `app.store.annotations.check_mask` first: pycocotools'
decoder trusts its input. The functions here take trusted (checked or generated) RLEs.

Pixel convention (pycocotools'): pixel (col i, row j) covers the square
[i, i+1) x [j, j+1); a polygon through the corners (0,0) (10,0) (10,10) (0,10)
rasterises to exactly the 10x10 pixels 0..9.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

RLE = dict[str, Any]


def mask_to_rle(mask: np.ndarray) -> RLE:
    """mask bool [H, W] -> {"size": [H, W], "counts": str}."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {tuple(mask.shape)}")
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(encoded["size"][0]), int(encoded["size"][1])], "counts": encoded["counts"].decode("ascii")}


def _for_pycocotools(rle: RLE) -> RLE:
    """Compressed RLE with bytes counts, as the C API wants; uncompressed (list counts) is compressed here."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        return coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [height, width], "counts": counts}


def rle_to_mask(rle: RLE) -> np.ndarray:
    """RLE -> mask bool [H, W]."""
    return coco_mask.decode(_for_pycocotools(rle)).astype(bool)


def rle_area(rle: RLE) -> int:
    """Number of foreground pixels."""
    return int(coco_mask.area(_for_pycocotools(rle)))


# Work per annotation is bounded (issue 13: a 206-byte file with the polygon
# [[0, 0, 3e7, 0, 0, 3e7]] made pycocotools walk 1.5e8 sub-pixel steps per edge).
# pycocotools rasterises a polygon by stepping along each edge at 5 samples per pixel,
# so its cost is the outline length; rings are clipped to the image first and then
# their total outline may be at most OUTLINE_LIMIT_FACTOR * (H + W) pixels.
MAX_POLYGON_POINTS = 100_000
OUTLINE_LIMIT_FACTOR = 64
CLIP_MARGIN = 1.0  # clip to the image plus one pixel: rings inside it reach pycocotools unchanged


def _clip_against(points: list[tuple[float, float]], axis: int, limit: float, keep_below: bool) -> list:
    """One Sutherland-Hodgman pass: keep the part of the ring with coord[axis] <= limit (or >=)."""
    def inside(point):
        return point[axis] <= limit if keep_below else point[axis] >= limit

    clipped = []
    for index, current in enumerate(points):
        previous = points[index - 1]
        if inside(current) != inside(previous):
            t = (limit - previous[axis]) / (current[axis] - previous[axis])
            crossing = [previous[0] + t * (current[0] - previous[0]), previous[1] + t * (current[1] - previous[1])]
            crossing[axis] = limit
            clipped.append(tuple(crossing))
        if inside(current):
            clipped.append(current)
    return clipped


def clip_ring(ring: list[float], height: int, width: int) -> list[float]:
    """Flat ring [x1, y1, ...] clipped to [-m, W+m] x [-m, H+m] (m = CLIP_MARGIN); [] when nothing is left.

    Sutherland-Hodgman against the four sides (exact for any simple or self-touching
    ring against a convex window); a ring already inside is returned unchanged.
    """
    xs, ys = ring[0::2], ring[1::2]
    low_x, high_x, low_y, high_y = -CLIP_MARGIN, width + CLIP_MARGIN, -CLIP_MARGIN, height + CLIP_MARGIN
    if min(xs) >= low_x and max(xs) <= high_x and min(ys) >= low_y and max(ys) <= high_y:
        return ring
    points = list(zip(xs, ys))
    for axis, limit, keep_below in ((0, low_x, False), (0, high_x, True), (1, low_y, False), (1, high_y, True)):
        points = _clip_against(points, axis, limit, keep_below)
        if not points:
            return []
    return [value for point in points for value in point]


def outline_length(ring: list[float]) -> float:
    """Perimeter of a closed flat ring, in pixels."""
    points = np.asarray(ring, dtype=float).reshape(-1, 2)
    return float(np.linalg.norm(points - np.roll(points, 1, axis=0), axis=1).sum())


def polygons_to_rle(polygons: list[list[float]], height: int, width: int) -> RLE:
    """COCO polygons (each flat [x1, y1, x2, y2, ...], >= 3 points) -> one RLE of their union.

    Rings are clipped to the image (clip_ring) before pycocotools sees them, so the
    result is the polygon's intersection with the image and the work is bounded;
    ValueError when a ring is malformed or the clipped outline is too long.
    """
    rings = [[float(v) for v in ring] for ring in polygons]
    for index, ring in enumerate(rings):
        if len(ring) < 6 or len(ring) % 2:
            raise ValueError(f"polygon {index} needs an even number of coordinates, at least 6, got {len(ring)}")
    if not rings:
        raise ValueError("no polygons given")
    points = sum(len(ring) for ring in rings) // 2
    if points > MAX_POLYGON_POINTS:
        raise ValueError(f"polygon has {points:,} points; at most {MAX_POLYGON_POINTS:,} per annotation")
    clipped = [ring for ring in (clip_ring(ring, height, width) for ring in rings) if len(ring) >= 6]
    outline, limit = sum(outline_length(ring) for ring in clipped), OUTLINE_LIMIT_FACTOR * (height + width)
    if outline > limit:
        raise ValueError(f"polygon outline is {outline:,.0f} px long inside its {width}x{height} image; "
                         f"at most {limit:,} px ({OUTLINE_LIMIT_FACTOR} x (width + height))")
    if not clipped:
        return mask_to_rle(np.zeros((height, width), dtype=bool))
    merged = coco_mask.merge(coco_mask.frPyObjects(clipped, height, width))
    return {"size": [height, width], "counts": merged["counts"].decode("ascii")}


def box_to_mask(bbox: list[float], height: int, width: int) -> np.ndarray:
    """Box [x, y, w, h] -> mask bool [H, W] of the pixels it covers (edges rounded, clipped to the image).

    Edges are clamped to the image before rounding, so huge values (1e308, whose sum is
    inf) give an empty or clipped mask instead of an OverflowError.
    """
    x, y, w, h = (float(v) for v in bbox)
    left, top = round(min(max(x, 0.0), width)), round(min(max(y, 0.0), height))
    right, bottom = round(min(max(x + w, 0.0), width)), round(min(max(y + h, 0.0), height))
    mask = np.zeros((height, width), dtype=bool)
    if right > left and bottom > top:
        mask[top:bottom, left:right] = True
    return mask


def _finite_numbers(values: Any) -> list[float] | None:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    numbers = [float(v) for v in values]
    return numbers if all(math.isfinite(v) for v in numbers) else None


def coco_shape_to_rle(segmentation: Any, bbox: Any, height: int, width: int) -> tuple[RLE, str]:
    """A COCO annotation's shape -> (RLE at [height, width], kind); ValueError says why not.

    kind: "rle" (the segmentation dict, returned UNCHECKED: validate it before use),
    "polygon" (list of flat rings; rings under 3 points dropped) or, with no
    segmentation, "box" (the bbox as a box-shaped mask). "-clipped" is appended when
    a polygon or box reaches outside the image; the rasteriser clips it.
    """
    if isinstance(segmentation, dict):
        return segmentation, "rle"
    if isinstance(segmentation, list) and segmentation:
        rings = [_finite_numbers(ring) for ring in segmentation]
        if any(ring is None for ring in rings):
            raise ValueError("polygon holds non-numeric or non-finite coordinates")
        usable = [ring for ring in rings if len(ring) >= 6 and len(ring) % 2 == 0]
        if not usable:
            raise ValueError("no polygon with at least 3 points")
        outside = any(
            min(ring[0::2]) < 0 or max(ring[0::2]) > width or min(ring[1::2]) < 0 or max(ring[1::2]) > height
            for ring in usable
        )
        return polygons_to_rle(usable, height, width), "polygon-clipped" if outside else "polygon"
    box = _finite_numbers(bbox)
    if box is None or len(box) != 4:
        raise ValueError("no segmentation and no usable bbox [x, y, w, h]")
    if box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"zero-area box {bbox}")
    outside = box[0] < 0 or box[1] < 0 or box[0] + box[2] > width or box[1] + box[3] > height
    return mask_to_rle(box_to_mask(box, height, width)), "box-clipped" if outside else "box"


def rle_from_json(text: str) -> RLE:
    """`Annotation.rle` text -> RLE with string counts."""
    return json.loads(text)
