"""Read an image file straight to the model input: decode once, JPEG draft when it is larger than needed.

pixel = (resize_bilinear(decoded, S x S) / 255 - 0.5) / 0.5   (sam3_lora.preprocess)

For a JPEG larger than S x S in both sides, `Image.draft` lets libjpeg decode at
1/2, 1/4 or 1/8 scale (the largest reduction that keeps both sides >= S), inside
the DCT: a 12 MP photo decodes as 3 MP at S = 1008, ~3-4x faster and 4x less memory,
and the reduction averages pixels (it smooths rather than aliases). A 1080p frame is
not reduced (1080 / 2 < 1008). Other formats decode at full size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sam3_lora.preprocess import image_to_tensor, normalize_pixels


def decode_rgb(path: str | Path, size: int) -> np.ndarray:
    """uint8 RGB array [h,w,3] of the image at `path`, draft-reduced (JPEG) to no less than size x size."""
    with Image.open(path) as image:
        if image.format == "JPEG" and min(image.size) >= 2 * size:
            image.draft("RGB", (size, size))
        return np.array(image.convert("RGB"))  # writable: torch.from_numpy warns on a read-only array


def load_model_pixels(path: str | Path, size: int) -> torch.Tensor:
    """Image file -> normalised float pixels [3,size,size] (the model input)."""
    return normalize_pixels(image_to_tensor(decode_rgb(path, size)), size)
