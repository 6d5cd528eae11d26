"""The clickable overview of one image: every shown instance tinted in its concept's colour.

    overlay = image * (1 - ALPHA * mask_i) + colour_i * ALPHA * mask_i     (drawn lowest score first)

then each instance's box outline and "#id concept score" label; the selected instance
gets a thick white-and-black outline, so it stands out on any colour. Prompt clicks
are dots (green +, red -), a first box corner a cross.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage, ImageDraw

from app.ui.annotate_masks import hex_to_rgb

ALPHA = 0.45
POSITIVE = (40, 220, 60)
NEGATIVE = (235, 40, 40)


@dataclass(frozen=True, eq=False)
class Shape:
    """One instance to draw. mask bool [H, W]; box [x, y, w, h] (COCO) in pixels."""

    annotation_id: int
    mask: np.ndarray
    box: tuple[float, float, float, float]
    color: str
    label: str
    score: float | None


def render_overlay(
    image: np.ndarray, shapes: list[Shape], selected_id: int | None = None,
    clicks: list[list[float]] | None = None, corner: list[float] | None = None,
) -> PILImage.Image:
    """image uint8 [H, W, 3] -> RGB picture with the shapes, clicks [[x, y, label]] and box corner."""
    ordered = sorted(shapes, key=lambda shape: (shape.score is not None, shape.score or 0.0))
    canvas = image.astype(np.float32)
    for shape in ordered:
        colour = np.array(hex_to_rgb(shape.color), dtype=np.float32)
        canvas = np.where(shape.mask[..., None], canvas * (1 - ALPHA) + colour * ALPHA, canvas)
    result = PILImage.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    line = max(1, round(max(image.shape[:2]) / 400))  # visible on a 4000 px photo, not fat on a 100 px one
    for shape in ordered:
        x, y, w, h = shape.box
        corners = (x, y, x + max(w - 1, 0), y + max(h - 1, 0))
        if shape.annotation_id == selected_id:
            draw.rectangle(corners, outline=(0, 0, 0), width=line * 4)
            draw.rectangle(corners, outline=(255, 255, 255), width=line * 2)
        else:
            draw.rectangle(corners, outline=hex_to_rgb(shape.color), width=line)
        draw.text((x + 3, y + 2), shape.label, fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
    radius = 2 + 2 * line
    for click_x, click_y, label in clicks or []:
        fill = POSITIVE if int(label) == 1 else NEGATIVE
        draw.ellipse((click_x - radius, click_y - radius, click_x + radius, click_y + radius), fill=fill, outline=(0, 0, 0))
    if corner is not None:
        corner_x, corner_y = corner
        for dx, dy in ((radius * 2, 0), (0, radius * 2)):
            draw.line((corner_x - dx, corner_y - dy, corner_x + dx, corner_y + dy), fill=(255, 255, 0), width=line + 1)
    return result
