"""Box formats, IoU and generalised IoU (Rezatofighi et al., CVPR 2019).

Boxes are normalised to 0..1. Two formats:
- cxcywh: (centre x, centre y, width, height), what the loss regresses (SAM3's targets);
- xyxy:   (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0, what IoU needs and what
  `Sam3Model` returns as `pred_boxes`.

Pairwise functions take [N,4] and [M,4] and return [N,M]; elementwise functions
take two [N,4] and return [N] (the matched pairs of the loss, without the N x M matrix).
"""
from __future__ import annotations

import torch

# A union or enclosing area of 0 happens only for two degenerate boxes (w or h = 0,
# e.g. a one-pixel-thin object); the epsilon keeps IoU defined there and changes
# nothing measurable for real boxes.
AREA_EPS = 1e-7


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[...,4] (cx, cy, w, h) -> [...,4] (cx - w/2, cy - h/2, cx + w/2, cy + h/2).

    Written with the same operations as transformers' SAM3 so converting the
    model's cxcywh boxes reproduces its `pred_boxes` bit for bit.
    """
    centre_x, centre_y, width, height = boxes.unbind(-1)
    return torch.stack(
        [centre_x - 0.5 * width, centre_y - 0.5 * height, centre_x + 0.5 * width, centre_y + 0.5 * height], dim=-1
    )


def box_area(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """[...,4] xyxy -> [...] area = (x1 - x0) * (y1 - y0)."""
    return (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]) * (boxes_xyxy[..., 3] - boxes_xyxy[..., 1])


def pairwise_box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU = |A ∩ B| / |A ∪ B| for every pair.

    boxes_a [N,4] xyxy, boxes_b [M,4] xyxy -> (iou [N,M], union [N,M]).
    """
    area_a = box_area(boxes_a)
    area_b = box_area(boxes_b)
    top_left = torch.max(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.min(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    overlap = (bottom_right - top_left).clamp(min=0)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = area_a[:, None] + area_b[None, :] - intersection
    return intersection / union.clamp(min=AREA_EPS), union


def pairwise_generalized_box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """GIoU = IoU - (|C| - |A ∪ B|) / |C|, C the smallest box enclosing A and B; in [-1, 1].

    boxes_a [N,4] xyxy, boxes_b [M,4] xyxy -> [N,M].
    """
    iou, union = pairwise_box_iou(boxes_a, boxes_b)
    top_left = torch.min(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.max(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    extent = (bottom_right - top_left).clamp(min=0)
    enclosing = extent[..., 0] * extent[..., 1]
    return iou - (enclosing - union) / enclosing.clamp(min=AREA_EPS)


def elementwise_box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU of row i of boxes_a with row i of boxes_b.

    boxes_a [N,4] xyxy, boxes_b [N,4] xyxy -> (iou [N], union [N]).
    """
    if boxes_a.shape != boxes_b.shape:
        raise ValueError(f"elementwise IoU needs equal shapes, got {list(boxes_a.shape)} and {list(boxes_b.shape)}")
    top_left = torch.max(boxes_a[:, :2], boxes_b[:, :2])
    bottom_right = torch.min(boxes_a[:, 2:], boxes_b[:, 2:])
    overlap = (bottom_right - top_left).clamp(min=0)
    intersection = overlap[:, 0] * overlap[:, 1]
    union = box_area(boxes_a) + box_area(boxes_b) - intersection
    return intersection / union.clamp(min=AREA_EPS), union


def elementwise_generalized_box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """GIoU of row i of boxes_a with row i of boxes_b (the diagonal of the pairwise GIoU).

    boxes_a [N,4] xyxy, boxes_b [N,4] xyxy -> [N].
    """
    iou, union = elementwise_box_iou(boxes_a, boxes_b)
    top_left = torch.min(boxes_a[:, :2], boxes_b[:, :2])
    bottom_right = torch.max(boxes_a[:, 2:], boxes_b[:, 2:])
    extent = (bottom_right - top_left).clamp(min=0)
    enclosing = extent[:, 0] * extent[:, 1]
    return iou - (enclosing - union) / enclosing.clamp(min=AREA_EPS)
