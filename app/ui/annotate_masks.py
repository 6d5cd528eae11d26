"""The brush editor's layer <-> an instance mask.

The editor (gr.ImageEditor, PNG, RGBA layers) always holds a canvas of exactly
EDITOR_CANVAS pixels: the image fitted into it (scale s = min(CW / W, CH / H), centred,
grey bars around) as the background, and the selected instance as one layer in the
concept's colour at LAYER_ALPHA. (Gradio 6.31's editor places a layer as if the
background filled the constructor's canvas_size; a background of any other size puts
the mask beside the object, so every value sent is made exactly that size.)

    layer[y, x] = (r, g, b, LAYER_ALPHA) where the fitted mask is set, else (0, 0, 0, 0)   [CH, CW, 4]
    painted     = max over layers of alpha > ALPHA_THRESHOLD, cropped to the image's rectangle
    mask        = painted resized to [H, W] (nearest), where it differs from the mask that was sent;
                  the stored mask elsewhere (a brush stroke on a 4000 px photo shown at 800 px
                  changes what it touches, and leaves the rest at full resolution)

The brush paints the same colour at BRUSH_OPACITY (alpha 153 on an empty pixel, more
over paint), the eraser sets alpha to 0, so "alpha > 127" is exactly "painted and not
erased" whatever the browser's anti-aliasing leaves at stroke edges.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image as PILImage

EDITOR_CANVAS = (800, 600)  # (width, height): the ImageEditor's canvas_size, and every value's size
LAYER_ALPHA = 150  # semi-transparent: the object stays visible under its mask
BRUSH_OPACITY = 0.6
ALPHA_THRESHOLD = 127
BAR_GREY = 96  # the bars around an image that does not fill the canvas
LAYER_NAME = "mask"


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """'#e6194b' -> (230, 25, 75); anything unparsable gives mid grey."""
    try:
        value = color.lstrip("#")
        return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)
    except (AttributeError, ValueError, IndexError):
        return 128, 128, 128


@dataclass(frozen=True)
class Placement:
    """Where an image of `size` (H, W) sits in the canvas: rectangle left, top, width, height (pixels)."""

    size: tuple[int, int]
    left: int
    top: int
    width: int
    height: int


def placement(size: tuple[int, int], canvas: tuple[int, int] = EDITOR_CANVAS) -> Placement:
    """The image fitted into the canvas (aspect kept, centred)."""
    height, width = size
    canvas_width, canvas_height = canvas
    scale = min(canvas_width / width, canvas_height / height)
    fitted_width, fitted_height = max(1, round(width * scale)), max(1, round(height * scale))
    return Placement(size, (canvas_width - fitted_width) // 2, (canvas_height - fitted_height) // 2,
                     fitted_width, fitted_height)


def _resize(array: np.ndarray, width: int, height: int, smooth: bool = False) -> np.ndarray:
    if array.shape[1] == width and array.shape[0] == height:
        return array
    resample = PILImage.Resampling.BILINEAR if smooth else PILImage.Resampling.NEAREST
    return np.asarray(PILImage.fromarray(array).resize((width, height), resample))


def fitted_mask(mask: np.ndarray, place: Placement) -> np.ndarray:
    """bool [H, W] -> bool [fitted height, fitted width] (nearest neighbour)."""
    return _resize(mask.astype(np.uint8), place.width, place.height) > 0


def _on_canvas(array: np.ndarray, place: Placement, fill: int, canvas: tuple[int, int] = EDITOR_CANVAS) -> np.ndarray:
    out = np.full((canvas[1], canvas[0], *array.shape[2:]), fill, dtype=np.uint8)
    out[place.top:place.top + place.height, place.left:place.left + place.width] = array
    return out


def mask_to_layer(mask: np.ndarray | None, size: tuple[int, int], color: str) -> np.ndarray:
    """bool mask [H, W] (None: nothing painted) of an image of size (H, W) -> RGBA canvas layer [CH, CW, 4]."""
    place = placement(size)
    fitted = np.zeros((place.height, place.width, 4), dtype=np.uint8)
    if mask is not None:
        if mask.shape != tuple(size):
            raise ValueError(f"mask is {mask.shape[0]}x{mask.shape[1]} but the image is {size[0]}x{size[1]}")
        fitted[fitted_mask(mask, place)] = (*hex_to_rgb(color), LAYER_ALPHA)
    return _on_canvas(fitted, place, 0)


def editor_background(image: np.ndarray) -> np.ndarray:
    """image uint8 [H, W, 3] fitted onto the editor canvas (grey bars) -> [CH, CW, 3]."""
    place = placement(image.shape[:2])
    shrinking = place.width < image.shape[1]  # smooth when shrinking a photo; whole pixels when enlarging
    return _on_canvas(_resize(image, place.width, place.height, smooth=shrinking), place, BAR_GREY)


def editor_value(image: np.ndarray, mask: np.ndarray | None, color: str, background: str | None = None) -> dict[str, Any]:
    """The ImageEditor value: image uint8 [H, W, 3] fitted as the background (or `background`, a file
    of editor_background(image) already written), the mask as its one layer."""
    fitted = editor_background(image) if background is None else background
    return {"background": fitted, "layers": [mask_to_layer(mask, image.shape[:2], color)], "composite": None}


def _alpha_of(layer: Any) -> np.ndarray | None:
    """A layer (numpy [h, w, 4|2], PIL image or None) -> alpha uint8 [CH, CW] (another size: nearest resize)."""
    if layer is None:
        return None
    array = np.asarray(layer.convert("RGBA")) if isinstance(layer, PILImage.Image) else np.asarray(layer)
    if array.ndim != 3 or array.shape[2] not in (2, 4):
        return None
    return _resize(np.ascontiguousarray(array[:, :, -1]).astype(np.uint8), *EDITOR_CANVAS)


def layer_to_mask(value: dict[str, Any] | None, size: tuple[int, int], sent: np.ndarray | None = None) -> np.ndarray:
    """The editor's value -> bool mask [H, W] of an image of size (H, W); see the module docstring.

    `sent` is the mask the editor was loaded with (None: an empty layer): canvas pixels
    that still show it keep its full-resolution pixels. Raises ValueError when the editor
    holds no layer.
    """
    layers = (value or {}).get("layers") or []
    alphas = [alpha for alpha in map(_alpha_of, layers) if alpha is not None]
    if not alphas:
        raise ValueError("the editor holds no mask layer: select an instance or paint with the brush first")
    place = placement(size)
    painted = np.logical_or.reduce([alpha > ALPHA_THRESHOLD for alpha in alphas])
    painted = painted[place.top:place.top + place.height, place.left:place.left + place.width]
    full = _resize(painted.astype(np.uint8), size[1], size[0]) > 0
    if sent is None:
        return full
    changed = _resize((painted != fitted_mask(sent, place)).astype(np.uint8), size[1], size[0]) > 0
    return np.where(changed, full, sent)


def concept_brush(color: str) -> gr.Brush:
    """The editor's brush: the concept's colour only, semi-transparent (see the module docstring)."""
    paint = ("#%02x%02x%02x" % hex_to_rgb(color), BRUSH_OPACITY)
    return gr.Brush(colors=[paint], default_color=paint, color_mode="fixed")
