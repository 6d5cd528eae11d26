"""The clickable overview of one image: every shown instance tinted in its concept's colour.

    overlay = image * (1 - ALPHA * mask_i) + colour_i * ALPHA * mask_i     (drawn lowest score first)

then each instance's box outline and "#id concept score" label (moved down, or up, until it
overlaps no other label: label_positions); the selected instance
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
    sizes = [_text_size(draw, shape.label, font) for shape in ordered]
    anchors = [(shape.box[0] * scale + 3, shape.box[1] * scale + 2) for shape in ordered]
    for shape, (x, y) in zip(ordered, label_positions(anchors, sizes, result.size)):
        draw.text((x, y), shape.label, fill=(255, 255, 255), font=font, stroke_width=1, stroke_fill=(0, 0, 0))
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


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[float, float]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=1)
    return right - left, bottom - top


def label_positions(anchors: list[tuple[float, float]], sizes: list[tuple[float, float]],
                    canvas: tuple[int, int]) -> list[tuple[float, float]]:
    """Top-left corners for labels of `sizes` (w, h) wanted at `anchors`, placed in order: a label
    that would overlap one already placed moves down one line at a time (then up from its anchor),
    and stays inside the canvas (W, H). Look-alike instances side by side keep readable labels."""
    placed: list[tuple[float, float, float, float]] = []
    result = []
    width, height = canvas
    for (x, y), (w, h) in zip(anchors, sizes):
        x = min(max(x, 0.0), max(width - w, 0.0))
        step = h + 2
        candidates = [y + k * step for k in range(0, 40)] + [y - k * step for k in range(1, 40)]
        spot = y
        for candidate in candidates:
            candidate = min(max(candidate, 0.0), max(height - h, 0.0))
            box = (x, candidate, x + w, candidate + h)
            if not any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in placed):
                spot = candidate
                break
        placed.append((x, spot, x + w, spot + h))
        result.append((x, spot))
    return result


def to_image_pixels(x: float, y: float, size: tuple[int, int]) -> tuple[float, float]:
    """A click on the overlay (its pixels) -> (x, y) in image pixels of an image of size (H, W)."""
    scale = display_scale(size)
    return float(int(x) // scale), float(int(y) // scale)
