"""The clickable overview of one image: every shown instance tinted in its concept's colour.

    overlay = image * (1 - ALPHA * mask_i) + colour_i * ALPHA * mask_i     (drawn lowest score first)

then each instance's box outline and "#id concept score" label; the selected instance
gets a thick white-and-black outline, so it stands out on any colour. Prompt clicks
are dots (green +, red -), a first box corner a cross, a prompt box a yellow outline. A small image is drawn
display_scale times larger; coordinates in and out stay in image pixels (see to_image_pixels).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage, ImageDraw, ImageFont

from app.ui.annotate_masks import hex_to_rgb

ALPHA = 0.45
MIN_DISPLAY_SIDE = 480  # px: images whose longer side is smaller are drawn enlarged
POSITIVE = (40, 220, 60)
NEGATIVE = (235, 40, 40)


def display_scale(size: tuple[int, int]) -> int:
    """Whole-number enlargement for drawing an image of size (H, W): its longer side reaches ~MIN_DISPLAY_SIDE."""
    return max(1, MIN_DISPLAY_SIDE // max(1, max(size)))


def enlarge(array: np.ndarray, scale: int) -> np.ndarray:
    """[H, W, ...] -> [H*scale, W*scale, ...] by repeating pixels."""
    return array if scale == 1 else np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)


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
    box: list[float] | None = None,
) -> PILImage.Image:
    """image uint8 [H, W, 3] -> RGB picture (enlarged by display_scale) with the shapes, clicks
    [[x, y, label]], box corner and prompt box (xyxy), all given in image pixels."""
    scale = display_scale(image.shape[:2])
    ordered = sorted(shapes, key=lambda shape: (shape.score is not None, shape.score or 0.0))
    canvas = enlarge(image, scale).astype(np.float32)
    for shape in ordered:
        colour = np.array(hex_to_rgb(shape.color), dtype=np.float32)
        canvas = np.where(enlarge(shape.mask, scale)[..., None], canvas * (1 - ALPHA) + colour * ALPHA, canvas)
    result = PILImage.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    line = max(1, round(max(canvas.shape[:2]) / 400))  # visible on a 4000 px photo, not fat on a 100 px one
    font = ImageFont.load_default(size=max(12, round(max(canvas.shape[:2]) / 40)))
    for shape in ordered:
        x, y, w, h = (v * scale for v in shape.box)
        corners = (x, y, x + max(w - 1, 0), y + max(h - 1, 0))
        if shape.annotation_id == selected_id:
            draw.rectangle(corners, outline=(0, 0, 0), width=line * 4)
            draw.rectangle(corners, outline=(255, 255, 255), width=line * 2)
        else:
            draw.rectangle(corners, outline=hex_to_rgb(shape.color), width=line)
        draw.text((x + 3, y + 2), shape.label, fill=(255, 255, 255), font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    radius = 2 + 2 * line
    if box is not None:
        draw.rectangle(tuple(v * scale for v in box), outline=(255, 255, 0), width=line + 1)
    for click_x, click_y, label in clicks or []:
        click_x, click_y = (click_x + 0.5) * scale, (click_y + 0.5) * scale
        fill = POSITIVE if int(label) == 1 else NEGATIVE
        draw.ellipse((click_x - radius, click_y - radius, click_x + radius, click_y + radius), fill=fill, outline=(0, 0, 0))
    if corner is not None:
        corner_x, corner_y = ((v + 0.5) * scale for v in corner)
        for dx, dy in ((radius * 2, 0), (0, radius * 2)):
            draw.line((corner_x - dx, corner_y - dy, corner_x + dx, corner_y + dy), fill=(255, 255, 0), width=line + 1)
    return result


def to_image_pixels(x: float, y: float, size: tuple[int, int]) -> tuple[float, float]:
    """A click on the overlay (its pixels) -> (x, y) in image pixels of an image of size (H, W)."""
    scale = display_scale(size)
    return float(int(x) // scale), float(int(y) // scale)
