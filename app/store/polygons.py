"""Masks -> polygons: outer contour of each connected component, then simplified.

No OpenCV: components come from scipy.ndimage.label (8-connected), each outer
boundary is walked along pixel edges, and Douglas-Peucker drops the vertices that
lie within `tolerance` pixels of the simplified outline.

Coordinates are pixel corners (x right, y down): pixel (col c, row r) is the square
[c, c+1) x [r, r+1), the convention pycocotools rasterises polygons with, so the
unsimplified contour of a hole-free component rasterises back to exactly its pixels.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def trace_outer_boundary(component: np.ndarray) -> np.ndarray:
    """Corner vertices [N, 2] (x, y) of the outer boundary of one 8-connected component.

    component: bool [H, W] holding one component. Walks clockwise on screen (inside on
    the right): at each vertex look at the two pixels ahead, AL (ahead-left) and AR
    (ahead-right): AR in and AL out -> straight; both in -> turn left; AR out -> turn
    right, except AR out and AL in (diagonal touch), where 8-connectivity turns left.
    Holes are never entered, so the contour is the outer one only.
    """
    padded = np.pad(component.astype(bool), 1)
    rows, cols = np.nonzero(padded)
    if rows.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    # Start at the top-left corner of the first pixel in raster order, heading right.
    start = (int(cols[0]), int(rows[0]))
    x, y = start
    dx, dy = 1, 0
    vertices: list[tuple[int, int]] = []
    while True:
        nx, ny = -dy, dx  # right-hand normal (y points down)
        # pixel with corner (x, y) in quadrant (sx, sy) is (x + (sx - 1) // 2, y + (sy - 1) // 2)
        ahead_right = padded[y + (dy + ny - 1) // 2, x + (dx + nx - 1) // 2]
        ahead_left = padded[y + (dy - ny - 1) // 2, x + (dx - nx - 1) // 2]
        if ahead_left:
            new_dx, new_dy = dy, -dx  # left turn (also the diagonal-touch case)
        elif ahead_right:
            new_dx, new_dy = dx, dy
        else:
            new_dx, new_dy = -dy, dx  # right turn
        if (new_dx, new_dy) != (dx, dy) or (x, y) == start:
            vertices.append((x, y))
        dx, dy = new_dx, new_dy
        x, y = x + dx, y + dy
        if (x, y) == start:
            break
    return np.asarray(vertices, dtype=np.int64) - 1  # undo the padding


def _distances_to_segment(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance of each point [K, 2] to the segment start-end."""
    segment = end - start
    length_sq = float(segment @ segment)
    if length_sq == 0.0:
        return np.linalg.norm(points - start, axis=1)
    t = np.clip(((points - start) @ segment) / length_sq, 0.0, 1.0)
    return np.linalg.norm(points - (start + t[:, None] * segment), axis=1)


def simplify_ring(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on a closed ring [N, 2]; keeps >= 3 vertices (else returns the input).

    The ring is cut at vertex 0 and the vertex farthest from it; each half keeps its
    farthest vertex while that lies more than `tolerance` from the current chord.
    """
    count = len(points)
    if count <= 3 or tolerance <= 0:
        return points
    ring = np.vstack([points, points[:1]]).astype(float)
    farthest = int(np.argmax(np.linalg.norm(ring[:count] - ring[0], axis=1)))
    keep = np.zeros(count, dtype=bool)
    keep[0] = keep[farthest] = True
    stack = [(0, farthest), (farthest, count)]
    while stack:
        first, last = stack.pop()
        if last - first < 2:
            continue
        distances = _distances_to_segment(ring[first + 1 : last], ring[first], ring[last])
        worst = int(np.argmax(distances))
        if distances[worst] > tolerance:
            middle = first + 1 + worst
            keep[middle % count] = True
            stack += [(first, middle), (middle, last)]
    simplified = points[keep]
    return simplified if len(simplified) >= 3 else points


def mask_to_polygons(mask: np.ndarray, tolerance: float = 1.0, min_pixels: int = 1) -> list[np.ndarray]:
    """mask bool [H, W] -> one simplified outer polygon [N, 2] (x, y floats, N >= 3) per component.

    Components smaller than `min_pixels` are dropped; holes are filled (outer contours only).
    """
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    polygons: list[np.ndarray] = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        component = labels[window] == index
        if int(component.sum()) < min_pixels:
            continue
        outline = trace_outer_boundary(component)
        offset = np.array([window[1].start, window[0].start])
        polygons.append(simplify_ring(outline + offset, tolerance).astype(float))
    return polygons
