"""The brush editor's layer <-> an instance mask.

The editor (gr.ImageEditor, PNG, RGBA layers) shows the image as its background and
the selected instance as one layer painted in the concept's colour at LAYER_ALPHA:

    layer[y, x] = (r, g, b, LAYER_ALPHA) where mask[y, x], else (0, 0, 0, 0)       [H, W, 4] uint8
    mask[y, x]  = max over layers of alpha[y, x] > ALPHA_THRESHOLD                   bool [H, W]

The brush paints the same colour at BRUSH_OPACITY (alpha 153 on an empty pixel, more
over paint), the eraser sets alpha to 0, so "alpha > 127" is exactly "painted and not
erased" whatever the browser's anti-aliasing leaves at stroke edges.
"""
from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from PIL import Image as PILImage

LAYER_ALPHA = 150  # semi-transparent: the object stays visible under its mask
BRUSH_OPACITY = 0.6
ALPHA_THRESHOLD = 127
LAYER_NAME = "mask"


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """'#e6194b' -> (230, 25, 75); anything unparsable gives mid grey."""
    try:
        value = color.lstrip("#")
        return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)
    except (AttributeError, ValueError, IndexError):
        return 128, 128, 128


def mask_to_layer(mask: np.ndarray | None, size: tuple[int, int], color: str) -> np.ndarray:
    """bool mask [H, W] (or None: nothing painted) -> RGBA layer [H, W, 4] uint8; size = (H, W)."""
    height, width = size
    layer = np.zeros((height, width, 4), dtype=np.uint8)
    if mask is not None:
        if mask.shape != (height, width):
            raise ValueError(f"mask is {mask.shape[0]}x{mask.shape[1]} but the image is {height}x{width}")
        layer[mask] = (*hex_to_rgb(color), LAYER_ALPHA)
    return layer


def editor_value(image: np.ndarray, mask: np.ndarray | None, color: str) -> dict[str, Any]:
    """The ImageEditor value: image [H, W, 3] as background, the mask as its one layer."""
    return {"background": image, "layers": [mask_to_layer(mask, image.shape[:2], color)], "composite": None}


def _alpha_of(layer: Any, size: tuple[int, int]) -> np.ndarray | None:
    """A layer (numpy [h, w, 4|3|2|1], PIL image or None) -> alpha uint8 [H, W] at the image size.

    A layer of another size (the browser may scale the canvas) is resized with nearest
    neighbour, so the threshold still sees painted / not painted. No alpha channel: None.
    """
    if layer is None:
        return None
    array = np.asarray(layer.convert("RGBA")) if isinstance(layer, PILImage.Image) else np.asarray(layer)
    if array.ndim != 3 or array.shape[2] not in (2, 4):
        return None
    alpha = np.ascontiguousarray(array[:, :, -1]).astype(np.uint8)
    height, width = size
    if alpha.shape != (height, width):
        alpha = np.asarray(PILImage.fromarray(alpha).resize((width, height), PILImage.Resampling.NEAREST))
    return alpha


def layer_to_mask(value: dict[str, Any] | None, size: tuple[int, int]) -> np.ndarray:
    """The editor's value -> bool mask [H, W]: a pixel is mask where any layer's alpha > ALPHA_THRESHOLD.

    Raises ValueError when the editor holds no layer (nothing to save).
    """
    layers = (value or {}).get("layers") or []
    alphas = [alpha for alpha in (_alpha_of(layer, size) for layer in layers) if alpha is not None]
    if not alphas:
        raise ValueError("the editor holds no mask layer: select an instance or paint with the brush first")
    return np.logical_or.reduce([alpha > ALPHA_THRESHOLD for alpha in alphas])


def concept_brush(color: str) -> gr.Brush:
    """The editor's brush: the concept's colour only, semi-transparent (see the module docstring)."""
    paint = ("#%02x%02x%02x" % hex_to_rgb(color), BRUSH_OPACITY)
    return gr.Brush(colors=[paint], default_color=paint, color_mode="fixed")
