"""Joint augmentation of one find-query: image, instance masks and boxes move together.

Everything happens at the model input size S, after preprocessing, so the masks the
loss sees are exactly the masks augmented here and every box is recomputed from its
transformed mask (box == box_of(mask), never a separately transformed box that can
drift from it). Instances whose mask becomes empty (cropped out, or shrunk below one
pixel) are dropped; a positive query can thereby become a negative one, which is
the truth for the augmented image.

Randomness comes only from the `torch.Generator` the caller passes, so a given
(seed, epoch, item) always produces the same augmented sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sam3_lora.coco import resize_masks_nearest

# Zooming beyond these factors leaves (almost) nothing of the image or of its objects.
MIN_SCALE = 0.25
MAX_SCALE = 4.0
# Padding value in normalised pixel space: 0 = mid-grey (127.5 before (x/255-0.5)/0.5).
PAD_VALUE = 0.0


@dataclass(frozen=True)
class AugmentSettings:
    """How a find-query is augmented during training.

    hflip_prob: probability of a horizontal flip (0 disables it).
    scale_min, scale_max: zoom factor range, sampled log-uniformly so zooming in by
        x and out by 1/x are equally likely. > 1 zooms in (random S x S crop of the
        enlarged image), < 1 zooms out (the shrunk image is placed at a random
        offset on a mid-grey S x S canvas). scale_min = scale_max = 1 disables it.
    """

    hflip_prob: float = 0.5
    scale_min: float = 0.75
    scale_max: float = 1.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {self.hflip_prob}")
        if not MIN_SCALE <= self.scale_min <= self.scale_max <= MAX_SCALE:
            raise ValueError(
                f"need {MIN_SCALE} <= scale_min <= scale_max <= {MAX_SCALE}, got scale_min={self.scale_min}, "
                f"scale_max={self.scale_max}; use scale_min = scale_max = 1 to turn scale jitter off"
            )


def mask_boxes_cxcywh(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of binary masks [T,H,W] -> float [T,4] cxcywh normalised to 0..1.

    Pixel-edge convention (as COCO): x0 = first column with a pixel, x1 = last
    column + 1, so a single pixel at column c spans [c, c+1] and has width 1/W.
    cx = (x0+x1)/(2W), w = (x1-x0)/W; same for y with H. Every mask must be non-empty.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be [T,H,W], got {list(masks.shape)}")
    num, height, width = masks.shape
    if num == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    masks = masks.bool()
    columns = masks.any(dim=1)  # [T,W]
    rows = masks.any(dim=2)  # [T,H]
    empty = ~columns.any(dim=1)
    if empty.any():
        raise ValueError(f"masks {empty.nonzero().flatten().tolist()} are empty; an empty mask has no box")
    x0 = columns.float().argmax(dim=1)
    x1 = width - columns.flip(-1).float().argmax(dim=1)
    y0 = rows.float().argmax(dim=1)
    y1 = height - rows.flip(-1).float().argmax(dim=1)
    return torch.stack(
        [(x0 + x1) / (2.0 * width), (y0 + y1) / (2.0 * height), (x1 - x0) / float(width), (y1 - y0) / float(height)],
        dim=1,
    ).float()


def hflip(pixels: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror image [3,S,S] and masks [T,S,S] left-right (a box's cx becomes 1 - cx)."""
    return pixels.flip(-1), masks.flip(-1)


def rescale(
    pixels: torch.Tensor, masks: torch.Tensor, scale: float, offset_fraction: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoom image [3,S,S] (bilinear) and masks [T,S,S] (nearest) by `scale`, keeping size S.

    The content is resized to n = round(S*scale). If n > S, the S x S window starting
    at (top, left) = round(offset_fraction * (n - S)) is kept; if n < S, the content
    is pasted at that offset (computed with S - n) on a canvas of PAD_VALUE / False.
    offset_fraction = (fy, fx), each in [0, 1].
    """
    size = pixels.shape[-1]
    scaled = max(1, int(round(size * scale)))
    if scaled == size:
        return pixels, masks
    pixels_scaled = F.interpolate(pixels[None], size=(scaled, scaled), mode="bilinear", align_corners=False)[0]
    masks_scaled = resize_masks_nearest(masks.bool(), scaled, scaled)  # bool indexing: no float copy
    span = abs(scaled - size)
    top, left = int(round(offset_fraction[0] * span)), int(round(offset_fraction[1] * span))
    if scaled > size:
        window = (slice(top, top + size), slice(left, left + size))
        return pixels_scaled[:, window[0], window[1]], masks_scaled[:, window[0], window[1]]
    canvas = pixels.new_full(pixels.shape, PAD_VALUE)
    canvas[:, top : top + scaled, left : left + scaled] = pixels_scaled
    mask_canvas = masks.new_zeros(masks.shape, dtype=torch.bool)
    mask_canvas[:, top : top + scaled, left : left + scaled] = masks_scaled
    return canvas, mask_canvas


def augment_image_and_masks(
    pixels: torch.Tensor, masks: torch.Tensor, settings: AugmentSettings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flip then scale jitter; pixels [3,S,S] float, masks [T,S,S] bool -> same shapes (nothing dropped).

    Draws exactly 4 numbers from `generator` whatever T is, so every find-query of one
    image (each a slice of `masks`) gets the same transformation.
    """
    draws = torch.rand(4, generator=generator).tolist()  # flip, scale, offset y, offset x
    masks = masks.bool()
    if draws[0] < settings.hflip_prob:
        pixels, masks = hflip(pixels, masks)
    if settings.scale_max > settings.scale_min:
        log_min, log_max = math.log(settings.scale_min), math.log(settings.scale_max)
        scale = math.exp(log_min + draws[1] * (log_max - log_min))
        pixels, masks = rescale(pixels, masks, scale, (draws[2], draws[3]))
    elif settings.scale_min != 1.0:
        pixels, masks = rescale(pixels, masks, settings.scale_min, (draws[2], draws[3]))
    return pixels, masks


def drop_empty_masks(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool masks [T,S,S] -> (the non-empty ones [T',S,S], their cxcywh boxes [T',4])."""
    kept = masks.flatten(1).any(dim=1) if masks.shape[0] else torch.zeros(0, dtype=torch.bool)
    masks = masks[kept]
    return masks, mask_boxes_cxcywh(masks)


def augment_find_query(
    pixels: torch.Tensor, masks: torch.Tensor, settings: AugmentSettings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random flip then scale jitter of one find-query.

    pixels [3,S,S] float (normalised), masks [T,S,S] bool ->
    (pixels [3,S,S], masks [T',S,S] bool, boxes [T',4] cxcywh 0..1) with T' <= T:
    instances whose mask is empty afterwards are dropped, boxes = mask_boxes_cxcywh(masks).
    The generator is consumed the same way whatever T is, so the image of a negative
    and of a positive query with the same generator state is transformed identically.
    """
    pixels, masks = augment_image_and_masks(pixels, masks, settings, generator)
    masks, boxes = drop_empty_masks(masks)
    return pixels, masks, boxes
