"""COCO annotations -> instance masks at the model's input size (pycocotools).

Any COCO segmentation form (polygons, RLE, compressed RLE; the bbox rectangle when
there is none) becomes a compressed RLE; decoded masks go to S x S with nearest
neighbour sampled at pixel centres (as the bilinear image resize), and an object
that nearest sampling would lose keeps the input pixel it covers most, so every
instance keeps a non-empty mask.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO


class DatasetError(ValueError):
    """The COCO data cannot be trained on; the message names the file and the reason."""


def load_coco(coco_json: str | Path) -> COCO:
    """Read a COCO json with pycocotools (its progress prints silenced); DatasetError if unreadable."""
    path = Path(coco_json)
    if not path.is_file():
        raise DatasetError(f"COCO annotations {path} not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except Exception as error:  # bad JSON, wrong top-level type, missing keys
        raise DatasetError(f"cannot read COCO annotations {path}: {type(error).__name__}: {error}") from error


def annotation_rle(annotation: dict, height: int, width: int) -> dict | None:
    """COCO segmentation (polygons, RLE or compressed RLE; bbox if none) -> compressed RLE.

    None when the annotation has no usable geometry (polygons of < 3 points and no bbox).
    """
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        # Polygons need >= 3 points; pycocotools would read a 4-number list as a bbox.
        segmentation = [polygon for polygon in segmentation if len(polygon) >= 6 and len(polygon) % 2 == 0]
    if isinstance(segmentation, list) and segmentation:
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation:
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        counts = segmentation["counts"]
        return {"size": list(segmentation["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}
    bbox = annotation.get("bbox")
    if bbox is None or len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
        return None
    return mask_utils.frPyObjects(np.array([bbox], dtype=np.float64), height, width)[0]


def nearest_indices(source: int, size: int) -> torch.Tensor:
    """Source index of each of `size` output samples, nearest-exact: floor((i + 0.5) * source / size), clamped."""
    return ((torch.arange(size, dtype=torch.float64) + 0.5) * (source / size)).floor().long().clamp_(max=source - 1)


def resize_masks_nearest(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """bool/uint8 masks [T,H,W] -> same dtype [T,height,width] by nearest-exact sampling at pixel centres.

    Pure indexing (the same samples as F.interpolate(mode="nearest-exact")), so no float copy of the masks:
    a 12 MP mask stays 12 MB (uint8), not 48 MB (float32).
    """
    rows = nearest_indices(masks.shape[-2], height)
    columns = nearest_indices(masks.shape[-1], width)
    return masks.index_select(-2, rows).index_select(-1, columns)


def rles_at_size(rles: list[dict], size: int) -> torch.Tensor:
    """Compressed RLEs (T >= 1, one image) -> bool masks [T,size,size], as masks_at_size of their decoded masks.

    pycocotools decodes to [H,W,T] in column-major order; the size x size nearest samples
    are taken from it directly (np.ix_), so the full-resolution masks are never transposed,
    copied or converted (at 12 MP that copy alone cost more than the decode).
    """
    decoded = mask_utils.decode(rles)  # [H,W,T] uint8
    rows = nearest_indices(decoded.shape[0], size).numpy()
    columns = nearest_indices(decoded.shape[1], size).numpy()
    sampled = torch.from_numpy(np.ascontiguousarray(decoded[np.ix_(rows, columns)].transpose(2, 0, 1))).bool()
    lost = (~sampled.flatten(1).any(dim=1)).nonzero().flatten()
    if len(lost):  # rare (objects below one model pixel): the exact fallback of masks_at_size
        sampled[lost] = masks_at_size(decoded[:, :, lost.numpy()].transpose(2, 0, 1), size)
    return sampled


def masks_at_size(masks: np.ndarray, size: int) -> torch.Tensor:
    """uint8 masks [T,H,W] (T >= 1) -> bool [T,size,size], nearest; a mask that vanishes keeps its best-covered pixel."""
    source = torch.from_numpy(np.ascontiguousarray(masks))
    # nearest-exact samples pixel centres like the bilinear image resize (align_corners=False);
    # plain "nearest" (floor) would shift masks against the image by up to half an input pixel.
    resized = resize_masks_nearest(source, size, size).bool()
    lost = (~resized.flatten(1).any(dim=1)).nonzero().flatten()
    if len(lost):  # rare (objects below one model pixel): only these get a float copy
        coverage = F.interpolate(source[lost][:, None].float(), size=(size, size), mode="area")[:, 0]
        best = coverage.flatten(1).argmax(dim=1)
        resized[lost, best // size, best % size] = True
    return resized
