"""Image preprocessing as the HF Sam3Processor does it, without torchvision.

pixel = (resize_bilinear(image, S x S) / 255 - 0.5) / 0.5, aspect ratio not kept
(S = 1008 for the real SAM3). Training masks follow the image to S x S in
sam3_lora.coco (nearest, at pixel centres); boxes are normalised to 0..1, so
resizing does not change them.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEAN = 0.5
STD = 0.5


def image_to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """PIL image or uint8 array [H,W] / [H,W,3|4] -> uint8 tensor [3,H,W] (RGB)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an image of shape [H,W], [H,W,3] or [H,W,4], got {list(array.shape)}")
    return torch.from_numpy(np.ascontiguousarray(array[:, :, :3])).permute(2, 0, 1)


def normalize_pixels(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 or float 0..255 tensor [3,H,W] or [B,3,H,W] -> float [.., 3, size, size], normalised."""
    batched = pixels.dim() == 4
    x = pixels.float() if batched else pixels.float()[None]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    x = (x / 255.0 - MEAN) / STD
    return x if batched else x[0]
