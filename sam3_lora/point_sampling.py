"""Importance-sampled points for mask losses (PointRend, Kirillov et al. 2020; Mask2Former).

A matched mask is scored at P points instead of every pixel, which bounds memory:
with SAM3's 288x288 predictions and 1008x1008 targets, full resolution means ~1M
pixels per matched mask. Points are drawn as:
1. k * P candidates uniformly in the unit square (k = oversample ratio, 3);
2. the beta * P most uncertain candidates (uncertainty = -|logit|, i.e. closest
   to the decision boundary; beta = importance ratio, 0.75) are kept;
3. (1 - beta) * P uniform points are added so the interior is still supervised.
Predicted logits and target masks are both read at the points by bilinear
interpolation (grid_sample, align_corners=False), so each point is a location in
the image regardless of the two resolutions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear read of N maps at P points each.

    maps [N,H,W] (float), coords [N,P,2] as (x, y) in 0..1 of the image (0 = left/top
    edge, 1 = right/bottom edge) -> values [N,P].
    """
    grid = (2.0 * coords - 1.0).unsqueeze(1)  # [N,1,P,2] in grid_sample's -1..1
    sampled = F.grid_sample(maps.unsqueeze(1), grid.to(maps.dtype), mode="bilinear", align_corners=False)
    return sampled[:, 0, 0, :]


@torch.no_grad()
def point_sample_binary(masks: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """`point_sample` of boolean masks without turning them into float first.

    masks [N,H,W] bool, coords [N,P,2] (x, y) in 0..1 -> [N,P] float, equal to
    point_sample(masks.float(), coords): the 4 neighbours of each point are gathered
    and blended with the bilinear weights, a neighbour outside the mask counting 0
    (grid_sample's zero padding, align_corners=False: pixel i covers [i, i+1) / size).
    Why: a float copy of N target masks at 1008 x 1008 is 4 MB each, ~400 MB at 100
    instances, and the points need only 4 x P of those values per mask.
    """
    num_masks, height, width = masks.shape
    flat = masks.reshape(num_masks, height * width)
    x = coords[..., 0].float() * width - 0.5
    y = coords[..., 1].float() * height - 0.5
    left, top = x.floor(), y.floor()
    right_weight, bottom_weight = x - left, y - top
    sampled = torch.zeros(coords.shape[:2], device=coords.device)
    for column_offset, column_weight in ((0, 1 - right_weight), (1, right_weight)):
        for row_offset, row_weight in ((0, 1 - bottom_weight), (1, bottom_weight)):
            column = (left + column_offset).long()
            row = (top + row_offset).long()
            inside = (column >= 0) & (column < width) & (row >= 0) & (row < height)
            index = row.clamp(0, height - 1) * width + column.clamp(0, width - 1)
            sampled += column_weight * row_weight * (flat.gather(1, index) & inside)
    return sampled


@torch.no_grad()
def uncertain_point_coords(
    mask_logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """mask_logits [N,H,W] -> coords [N,num_points,2] in 0..1 (see the module docstring).

    No gradient: the choice of points is not part of the loss.
    """
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_masks = mask_logits.shape[0]
    device = mask_logits.device
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_uniform = num_points - num_uncertain

    candidates = torch.rand(num_masks, num_candidates, 2, generator=generator, device=device)
    uncertainty = -point_sample(mask_logits.float(), candidates).abs()  # [N, kP]
    most_uncertain = uncertainty.topk(num_uncertain, dim=1).indices  # [N, beta P]
    chosen = candidates.gather(1, most_uncertain[..., None].expand(-1, -1, 2))
    uniform = torch.rand(num_masks, num_uniform, 2, generator=generator, device=device)
    return torch.cat([chosen, uniform], dim=1)
