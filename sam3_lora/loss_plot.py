"""Loss curves as PNG, drawn with Pillow (no plotting library in the worker image).

A panel plots one series of a training history (the "step" and "eval" events of
`train()`): x = optimiser step, y = the series' value; training points joined by a
line, validation points as dots. Axes are linear, y from 0 to the largest value (or
from the smallest when it is negative), so two runs compare by eye.

  draw_loss_curve(history, path)     the total loss, one panel (the model card's loss_curve.png)
  draw_results_grid(history, path)   the total and every loss term, one panel each (results.png,
                                     as `yolo train` writes beside its weights)
"""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

PANEL_WIDTH, PANEL_HEIGHT, MARGIN = 640, 360, 48
GRID_PANEL_WIDTH, GRID_PANEL_HEIGHT, GRID_COLUMNS = 320, 220, 4
TRAIN_COLOUR, VAL_COLOUR, AXIS_COLOUR = (31, 119, 180), (214, 39, 40), (60, 60, 60)


def series_points(history: list[dict], kind: str, name: str = "loss") -> list[tuple[int, float]]:
    """[(step, value), ...] of the history's events of `kind` ("step" or "eval") with a finite `name`."""
    return [(int(e["step"]), float(e[name])) for e in history
            if e.get("type") == kind and isinstance(e.get(name), (int, float)) and not isinstance(e.get(name), bool)
            and math.isfinite(e[name])]


def loss_term_names(history: list[dict]) -> list[str]:
    """"loss" then every final-layer loss term logged (loss_bbox, loss_ce, ...; not the per-layer
    loss_bbox_0 or the weighted/ copies), sorted."""
    terms = {name for event in history if event.get("type") in ("step", "eval") for name in event
             if name.startswith("loss_") and not name[-1].isdigit()}
    return ["loss", *sorted(terms)]


def _draw_panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
                train: list[tuple[int, float]], val: list[tuple[int, float]]) -> None:
    """One series inside `box` = (x0, y0, x1, y1) of the canvas."""
    x0, y0, x1, y1 = box
    left, top, right, bottom = x0 + MARGIN, y0 + MARGIN // 2, x1 - MARGIN // 2, y1 - MARGIN
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS_COLOUR, width=1)
    points = train + val
    max_step = max([step for step, _ in points] + [1])
    low = min([value for _, value in points] + [0.0])
    high = max([value for _, value in points] + [low + 1e-12])

    def to_pixel(step: int, value: float) -> tuple[float, float]:
        return (left + (right - left) * step / max_step, bottom - (bottom - top) * (value - low) / (high - low))

    if len(train) > 1:
        draw.line([to_pixel(*p) for p in train], fill=TRAIN_COLOUR, width=2)
    for step, value in train if len(train) == 1 else []:
        x, y = to_pixel(step, value)
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=TRAIN_COLOUR)
    for step, value in val:
        x, y = to_pixel(step, value)
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=VAL_COLOUR)
    draw.text((left, bottom + 8), f"step 0 .. {max_step}", fill=AXIS_COLOUR)
    draw.text((left + 4, top), f"{title} (max {high:.4g})", fill=AXIS_COLOUR)
    draw.text((right - 110, top), "- train", fill=TRAIN_COLOUR)
    draw.text((right - 50, top), "o val", fill=VAL_COLOUR)


def draw_loss_curve(history: list[dict], path: Path) -> Path:
    """Write the total-loss curve PNG (PANEL_WIDTH x PANEL_HEIGHT); returns `path`."""
    image = Image.new("RGB", (PANEL_WIDTH, PANEL_HEIGHT), "white")
    _draw_panel(ImageDraw.Draw(image), (0, 0, PANEL_WIDTH, PANEL_HEIGHT), "loss",
                series_points(history, "step"), series_points(history, "eval"))
    image.save(path, format="PNG")
    return path


def draw_results_grid(history: list[dict], path: Path) -> Path:
    """Write one panel per name of `loss_term_names`, GRID_COLUMNS per row; returns `path`."""
    names = loss_term_names(history)
    rows = math.ceil(len(names) / GRID_COLUMNS)
    image = Image.new("RGB", (GRID_PANEL_WIDTH * min(len(names), GRID_COLUMNS), GRID_PANEL_HEIGHT * rows), "white")
    draw = ImageDraw.Draw(image)
    for index, name in enumerate(names):
        x0, y0 = GRID_PANEL_WIDTH * (index % GRID_COLUMNS), GRID_PANEL_HEIGHT * (index // GRID_COLUMNS)
        _draw_panel(draw, (x0, y0, x0 + GRID_PANEL_WIDTH, y0 + GRID_PANEL_HEIGHT), name,
                    series_points(history, "step", name), series_points(history, "eval", name))
    image.save(path, format="PNG")
    return path
