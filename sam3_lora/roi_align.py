"""RoIAlign in pure torch, so SAM3 box prompts work where torchvision is missing.

SAM3's geometry encoder pools each box prompt from the image features with
`torchvision.ops.roi_align(features, boxes_per_image, roi_size)` (defaults:
spatial_scale 1, sampling_ratio -1, aligned False). No CPU build of torchvision
fits next to the CPU torch of this project (../shared/docs/sam3.md), and
`modeling_sam3` then never binds the name `torchvision`, so a box prompt dies
with a NameError. `ensure_box_prompt_support()` binds a stand-in that holds this
function, and only when torchvision itself cannot be imported.

The formula (Mask R-CNN's RoIAlign, torchvision's semantics):
  box (x1, y1, x2, y2) in input pixels; o = 0.5 if aligned else 0
  start = (x1 * s - o, y1 * s - o), size (w, h) = (x2 - x1, y2 - y1) * s,
  clamped to >= 1 when not aligned; bin size (bw, bh) = (w / OW, h / OH)
  grid per bin (gw, gh) = sampling_ratio if > 0 else ceil(w / OW), ceil(h / OH)
  sample points  y = y_start + ph*bh + (iy + 0.5) * bh / gh  (iy < gh), x likewise
  out[k, c, ph, pw] = 1 / max(gh*gw, 1) * sum_{iy, ix} bilinear(f[b_k, c], y, x)
bilinear(): a point with y < -1, y > H, x < -1 or x > W reads 0; otherwise the
coordinate is clamped to >= 0, and a point at or past the last row/column reads
that row/column.

Bilinear weights separate into a row factor and a column factor, and the grid is
a product of row and column positions, so each box reduces to two averaging
matrices Ay [OH, H] and Ax [OW, W] and out[k] = Ay @ f[b_k] @ Ax^T per channel.
That is exact (no approximation) and differentiable with respect to the features.
"""
from __future__ import annotations

import importlib
import types

import torch

def _rois_with_batch_index(boxes: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """torchvision's two box formats -> [K,5] (batch_index, x1, y1, x2, y2)."""
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes as one tensor must be [K,5] (batch_index, x1, y1, x2, y2), got {list(boxes.shape)}")
        return boxes
    rows = []
    for image_index, image_boxes in enumerate(boxes):
        if image_boxes.dim() != 2 or image_boxes.shape[1] != 4:
            raise ValueError(f"boxes of image {image_index} must be [L,4] xyxy, got {list(image_boxes.shape)}")
        index_column = torch.full_like(image_boxes[:, :1], image_index)
        rows.append(torch.cat([index_column, image_boxes], dim=1))
    if not rows:
        raise ValueError("boxes is an empty list; give one [L,4] tensor per image")
    return torch.cat(rows, dim=0)


def _averaging_matrix(start: torch.Tensor, length: torch.Tensor, bins: int, grid: torch.Tensor, extent: int) -> torch.Tensor:
    """Per-box matrix [K, bins, extent]: row p averages the bilinear weights of bin p's samples on one axis.

    start, length, grid: [K]; the k-th box puts grid[k] samples in each of its `bins` bins.
    """
    max_grid = max(int(grid.max().item()) if grid.numel() else 1, 1)
    bin_size = length / bins                                                            # [K]
    bin_index = torch.arange(bins, device=start.device, dtype=start.dtype)              # [P]
    sample_index = torch.arange(max_grid, device=start.device, dtype=start.dtype)       # [G]
    safe_grid = grid.clamp(min=1).to(start.dtype)
    position = (start[:, None, None] + bin_index[None, :, None] * bin_size[:, None, None]
                + (sample_index[None, None, :] + 0.5) * (bin_size / safe_grid)[:, None, None])  # [K,P,G]
    in_grid = sample_index[None, None, :] < grid[:, None, None].to(start.dtype)
    in_range = (position >= -1.0) & (position <= extent)
    position = position.clamp(min=0.0)
    low = position.floor().long()
    at_edge = low >= extent - 1
    low = torch.where(at_edge, torch.full_like(low, extent - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(position), position - low.to(position.dtype))
    weight_ok = (in_grid & in_range).to(position.dtype)
    matrix = torch.zeros(*position.shape, extent, device=start.device, dtype=start.dtype)  # [K,P,G,extent]
    matrix.scatter_add_(-1, low[..., None], ((1.0 - frac) * weight_ok)[..., None])
    matrix.scatter_add_(-1, high[..., None], (frac * weight_ok)[..., None])
    return matrix.sum(dim=2) / safe_grid[:, None, None]


def roi_align(
    input: torch.Tensor,
    boxes: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """RoIAlign with torchvision.ops.roi_align's signature and semantics (formula in the module docstring).

    input [N,C,H,W]; boxes either [K,5] (batch_index, x1, y1, x2, y2) or a list of N
    tensors [L_i,4] xyxy, in input pixels before `spatial_scale`; returns
    [K,C,OH,OW] in input's dtype (computed in float32 at least).
    """
    if input.dim() != 4:
        raise ValueError(f"input must be [N,C,H,W], got {list(input.shape)}")
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    rois = _rois_with_batch_index(boxes).to(device=input.device)
    compute_dtype = torch.promote_types(input.dtype, torch.float32)
    features = input.to(compute_dtype)
    rois = rois.to(compute_dtype)
    _, channels, height, width = features.shape
    num_rois = rois.shape[0]
    if num_rois == 0:
        return input.new_zeros((0, channels, out_h, out_w))

    offset = 0.5 if aligned else 0.0
    x_start = rois[:, 1] * spatial_scale - offset
    y_start = rois[:, 2] * spatial_scale - offset
    roi_width = rois[:, 3] * spatial_scale - offset - x_start
    roi_height = rois[:, 4] * spatial_scale - offset - y_start
    if not aligned:  # legacy behaviour: a box is never smaller than one pixel
        roi_width = roi_width.clamp(min=1.0)
        roi_height = roi_height.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full((num_rois,), sampling_ratio, device=input.device, dtype=torch.long)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_height / out_h).long()
        grid_w = torch.ceil(roi_width / out_w).long()

    rows = _averaging_matrix(y_start, roi_height, out_h, grid_h, height)   # [K,OH,H]
    cols = _averaging_matrix(x_start, roi_width, out_w, grid_w, width)     # [K,OW,W]
    output = features.new_zeros((num_rois, channels, out_h, out_w))
    batch_index = rois[:, 0].long()
    for image in batch_index.unique().tolist():
        chosen = batch_index == image
        pooled_rows = torch.einsum("kph,chw->kcpw", rows[chosen], features[image])
        output[chosen] = torch.einsum("kcpw,kqw->kcpq", pooled_rows, cols[chosen])
    return output.to(input.dtype)


# What modeling_sam3 sees as `torchvision` when the real one is missing: only `ops.roi_align` is used.
_STAND_IN_TORCHVISION = types.SimpleNamespace(ops=types.SimpleNamespace(roi_align=roi_align))


def ensure_box_prompt_support() -> str:
    """Make SAM3 box prompts runnable; return which RoIAlign serves them: 'torchvision' or 'pure-torch'.

    A real torchvision is never replaced: if `modeling_sam3` already holds it, or it
    imports, that is what runs. Only when it cannot be imported is `modeling_sam3.torchvision`
    bound to a stand-in whose `ops.roi_align` is `roi_align` above. Idempotent.
    """
    # import_module, not `from transformers.models.sam3 import modeling_sam3`: the lazy package hands out a
    # placeholder that raises "requires the Torchvision library" when modeling_sam3 was not imported yet.
    modeling_sam3 = importlib.import_module("transformers.models.sam3.modeling_sam3")

    bound = getattr(modeling_sam3, "torchvision", None)
    if isinstance(bound, types.ModuleType):
        return "torchvision"
    if bound is _STAND_IN_TORCHVISION:
        return "pure-torch"
    try:
        import torchvision  # noqa: F401  (a real one, if it imports, is preferred)
    except ImportError:
        modeling_sam3.torchvision = _STAND_IN_TORCHVISION
        return "pure-torch"
    modeling_sam3.torchvision = torchvision
    return "torchvision"
