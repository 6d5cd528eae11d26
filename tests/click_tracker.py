"""Synthetic look-alikes for click tests: DISKS same-coloured disks of radius RADIUS on grey.

The tiny tracker's weights are random, so its answer to a click is not the disk; tests
compare the studio's result with the tracker run directly. (Training the tiny tracker on
these scenes with SAM's lone-click recipe, frozen ViT, reached IoU 0.58-0.68 with the
clicked disk after 600 steps of 4 scenes, but took 90-330 s on the shared 2-core machine:
too slow for the suite.)
"""
from __future__ import annotations

import numpy as np

SIDE, RADIUS, DISKS = 112, 12, 3
DISK_COLOUR, BACKGROUND = (220, 60, 60), 40


def disk_scene(rng: np.random.Generator, side: int = SIDE) -> tuple[np.ndarray, list[np.ndarray]]:
    """(image uint8 [side, side, 3], one bool mask per disk); disk centres >= 2.5 radii apart."""
    centres: list[np.ndarray] = []
    while len(centres) < DISKS:
        centre = rng.integers(RADIUS + 6, side - RADIUS - 6, 2)
        if all(np.hypot(*(centre - other)) > 2.5 * RADIUS for other in centres):
            centres.append(centre)
    rows, columns = np.mgrid[:side, :side]
    image = np.full((side, side, 3), BACKGROUND, np.uint8)
    masks = []
    for x, y in centres:
        mask = (columns - x) ** 2 + (rows - y) ** 2 <= RADIUS ** 2
        image[mask] = DISK_COLOUR
        masks.append(mask)
    return image, masks
