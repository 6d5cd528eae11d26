"""Greedy non-maximum suppression on boxes (xyxy) and on masks, in pure torch.

Greedy NMS: visit candidates by decreasing score (ties keep input order); keep a
candidate unless its IoU with an already kept one is > iou_threshold.
  box IoU  = area(a ∩ b) / area(a ∪ b) on xyxy boxes
  mask IoU = |a ∧ b| / |a ∨ b| on boolean masks
A pair whose union is empty has IoU 0 (two empty masks never suppress each other).
SAM3 proposes at most a few hundred queries, so an N x N IoU matrix and a Python
loop over N are cheap; torchvision's nms is not available here (sam3.md).
"""
from __future__ import annotations

import numpy as np
import torch


def box_iou_matrix(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes [N,4] x [M,4] -> [N,M]; a pair with zero union gets 0."""
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]).clamp(min=0) * (boxes_a[:, 3] - boxes_a[:, 1]).clamp(min=0)
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]).clamp(min=0) * (boxes_b[:, 3] - boxes_b[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    overlap = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - overlap
    return torch.where(union > 0, overlap / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))


def mask_iou_matrix(masks_a: torch.Tensor, masks_b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of boolean masks [N,H,W] x [M,H,W] -> [N,M] float32; zero union gets 0."""
    flat_a = masks_a.flatten(1).float()
    flat_b = masks_b.flatten(1).float()
    overlap = flat_a @ flat_b.T
    union = flat_a.sum(1)[:, None] + flat_b.sum(1)[None, :] - overlap
    return torch.where(union > 0, overlap / union.clamp(min=1.0), torch.zeros_like(union))


def greedy_nms(iou: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Kept indices (long [K], by decreasing score) from a precomputed IoU matrix [N,N] and scores [N]."""
    if iou.shape != (scores.shape[0], scores.shape[0]):
        raise ValueError(f"iou must be [N,N] for N={scores.shape[0]} scores, got {list(iou.shape)}")
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    overlaps = (iou > iou_threshold).cpu().numpy()
    alive = ~np.zeros(len(order), dtype=bool)
    kept: list[int] = []
    for candidate in order:
        if alive[candidate]:
            kept.append(candidate)
            alive &= ~overlaps[candidate]
    return torch.tensor(kept, dtype=torch.long, device=scores.device)


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS on xyxy boxes [N,4] with scores [N]; returns kept indices by decreasing score."""
    if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"boxes must be [N,4] with N = len(scores) = {scores.shape[0]}, got {list(boxes.shape)}")
    return greedy_nms(box_iou_matrix(boxes.float(), boxes.float()), scores, iou_threshold)


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS on boolean masks [N,H,W] with scores [N]; returns kept indices by decreasing score."""
    if masks.dim() != 3 or masks.shape[0] != scores.shape[0]:
        raise ValueError(f"masks must be [N,H,W] with N = len(scores) = {scores.shape[0]}, got {list(masks.shape)}")
    return greedy_nms(mask_iou_matrix(masks.bool(), masks.bool()), scores, iou_threshold)
