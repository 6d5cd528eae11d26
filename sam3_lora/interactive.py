"""Click / box / mask prompts -> ONE object, with SAM3's tracker (Sam3TrackerModel, SAM2-style).

Sam3Model answers concept prompts (every look-alike); the tracker answers "this object".
Both read the same ViT, so the ViT runs once per image for Find all and for clicks:

    vision  = vision_features(model, pixels, cache)          predict.py; ViT (+ its LoRA) of `model`
    grid    = vision.last_hidden_state [1, g*g, C] -> [1, C, g, g]        g = image_size / 14
    maps    = tracker.vision_encoder.neck(grid)[:3]           [1,D,4g,4g], [1,D,2g,2g], [1,D,g,g]
    maps[0] = conv_s0(maps[0]); maps[1] = conv_s1(maps[1])     (as Sam3TrackerModel.get_image_features)
    maps[2] = maps[2] + no_memory_embedding                     (a single image: no video memory)

Prompts go to the model frame S x S (S = image_size, aspect not kept):
    point (x, y) px -> (x * S / W, y * S / H); box xyxy likewise; label 1 = on the object, 0 = not.
    mask prompt (bool [H,W], e.g. the selected instance) -> area-resized to [4g,4g] fraction p,
    logit = MASK_PROMPT_LOGIT * (2p - 1).
Outputs: pred_masks [1,1,K,4g,4g] logits, iou_scores [1,1,K] (predicted IoU); K = 3 with
multimask_output (SAM's answer to an ambiguous single click: part / object / group), else 1.
Each mask: bilinear to [H,W], > 0. Returned best predicted IoU first.

Weights: `Sam3TrackerModel.from_pretrained(source)` reads the tracker from the SAM3 checkpoint
(transformers maps `tracker_model.*`, `tracker_neck.*` -> neck and the detector ViT); a folder
with a `tracker/` subfolder (the tiny test model) is read from there. The tracker's own ViT
copy is dropped after loading: features come from the Sam3Model (so a vision LoRA applies to
clicks too). Adapters train the Sam3Model only; the tracker's neck, prompt encoder and mask
decoder stay as loaded.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import Sam3TrackerModel

from sam3_lora.model import ModelLoadError, model_image_size
from sam3_lora.predict import BackboneCache, Instance, _inference, image_key, sam3_of, vision_features
from sam3_lora.preprocess import image_to_tensor

TRACKER_SUBFOLDER = "tracker"
MASK_PROMPT_LOGIT = 10.0
CLICK_PHRASE = "click"  # Instance.phrase of a tracker answer (the concept is the caller's)


def load_tracker(source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Sam3TrackerModel:
    """The click tracker of the SAM3 at `source` (hub id or folder; `source`/tracker first), in eval mode, ViT dropped."""
    folder = Path(str(source)) / TRACKER_SUBFOLDER
    where = str(folder) if (folder / "config.json").is_file() else str(source)
    try:
        tracker = Sam3TrackerModel.from_pretrained(where, dtype=dtype)
    except Exception as error:  # hub, network, missing files, a checkpoint without the tracker
        raise ModelLoadError(f"cannot load the SAM3 click tracker from {where!r}: {type(error).__name__}: {error}") from error
    tracker.vision_encoder.backbone = None  # the Sam3Model's ViT gives the features (one ViT pass for both)
    return tracker.to(device).eval()


def check_pair(model: torch.nn.Module, tracker: Sam3TrackerModel) -> None:
    """Raise ValueError when the tracker does not fit the SAM3's ViT (input size, width)."""
    size = model_image_size(sam3_of(model))
    tracker_size = tracker.prompt_encoder.input_image_size
    if size != tracker_size:
        raise ValueError(f"the click tracker takes {tracker_size} px images but the SAM3 takes {size} px; load both from one checkpoint")


def tracker_maps(model: torch.nn.Module, tracker: Sam3TrackerModel, pixels: torch.Tensor,
                 cache: BackboneCache | None = None, tracker_cache: BackboneCache | None = None) -> list[torch.Tensor]:
    """uint8 image [3,H,W] -> the tracker's 3 feature maps (formulas in the module docstring), cached per image."""
    key = f"{image_key(pixels)}|tracker{id(tracker)}" if tracker_cache is not None else ""
    if tracker_cache is not None and (cached := tracker_cache.get(model, key)) is not None:
        return cached
    vision = vision_features(model, pixels, cache)
    hidden = vision.last_hidden_state                                   # [1, g*g, C]
    grid_h, grid_w = tracker.prompt_encoder.image_embedding_size
    spatial = hidden.reshape(hidden.shape[0], grid_h, grid_w, -1).permute(0, 3, 1, 2).to(tracker.dtype)
    fpn, _ = tracker.vision_encoder.neck(spatial)
    maps = list(fpn[:len(tracker.backbone_feature_sizes)])
    maps[0] = tracker.mask_decoder.conv_s0(maps[0])
    maps[1] = tracker.mask_decoder.conv_s1(maps[1])
    maps[-1] = maps[-1] + tracker.no_memory_embedding.reshape(1, -1, 1, 1)
    if tracker_cache is not None:
        tracker_cache.put(model, key, maps)
    return maps


def _mask_prompt(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """bool [H,W] -> logits [1,1,h,w] = MASK_PROMPT_LOGIT * (2 * area-resized fraction - 1)."""
    fraction = F.interpolate(torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None], size=size, mode="area")
    return MASK_PROMPT_LOGIT * (2 * fraction - 1)


def _box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    """xyxy pixel box around a bool mask (x2, y2 exclusive); zeros when empty."""
    rows, columns = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return (0.0, 0.0, 0.0, 0.0)
    return (float(columns[0]), float(rows[0]), float(columns[-1] + 1), float(rows[-1] + 1))


def _check_prompts(points, labels, box, image_size: tuple[int, int]) -> None:
    height, width = image_size
    if len(points) != len(labels):
        raise ValueError(f"got {len(points)} clicks but {len(labels)} click labels")
    for index, ((x, y), label) in enumerate(zip(points, labels)):
        if int(label) not in (0, 1):
            raise ValueError(f"click {index} has label {label!r}; use 1 (on the object) or 0 (not on it)")
        if not (0 <= float(x) <= width and 0 <= float(y) <= height):
            raise ValueError(f"click {index} at ({x}, {y}) is outside the {width}x{height} image")
    if box is not None and (len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]):
        raise ValueError(f"box {list(box)!r} must be x1, y1, x2, y2 pixels with x2 > x1 and y2 > y1")
    if not points and box is None:
        raise ValueError("nothing to segment: give a click or a box")


def segment_object(
    model: torch.nn.Module,
    tracker: Sam3TrackerModel,
    image: Image.Image | np.ndarray,
    points: Sequence[Sequence[float]] = (),
    labels: Sequence[int] = (),
    box: Sequence[float] | None = None,
    mask: np.ndarray | None = None,
    multimask: bool | None = None,
    cache: BackboneCache | None = None,
    tracker_cache: BackboneCache | None = None,
) -> list[Instance]:
    """Candidate masks of the ONE object the prompts point at, best predicted IoU first.

    points (x, y) pixels with labels 1 / 0; box xyxy pixels; mask bool [H,W] (refine it).
    multimask None: 3 candidates for a lone click (ambiguous), else 1. Instance.score is
    the predicted IoU clamped to [0, 1].
    """
    pixels = image_to_tensor(image)
    height, width = pixels.shape[1], pixels.shape[2]
    _check_prompts(points, labels, box, (height, width))
    check_pair(model, tracker)
    if mask is not None and tuple(mask.shape) != (height, width):
        raise ValueError(f"mask prompt is {tuple(mask.shape)} but the image is {(height, width)}")
    if multimask is None:
        multimask = len(points) == 1 and box is None and mask is None
    side = tracker.prompt_encoder.input_image_size
    scale = torch.tensor([side / width, side / height])
    prompts = {}
    if points:
        prompts["input_points"] = (torch.tensor(points, dtype=torch.float32) * scale)[None, None]   # [1,1,N,2]
        prompts["input_labels"] = torch.tensor([int(v) for v in labels], dtype=torch.long)[None, None]
    if box is not None:
        prompts["input_boxes"] = (torch.tensor(box, dtype=torch.float32).reshape(2, 2) * scale).reshape(1, 1, 4)
    if mask is not None:
        prompts["input_masks"] = _mask_prompt(mask, tracker.prompt_encoder.mask_input_size)
    with _inference(model), torch.inference_mode():
        maps = tracker_maps(model, tracker, pixels, cache, tracker_cache)
        prompts = {name: value.to(tracker.device, tracker.dtype if value.is_floating_point() else value.dtype)
                   for name, value in prompts.items()}
        outputs = tracker(image_embeddings=maps, multimask_output=multimask, **prompts)
    logits = outputs.pred_masks[0, 0].float()                                            # [K,4g,4g]
    scores = outputs.iou_scores[0, 0].float().clamp(0, 1)                                # [K]
    found = []
    for index in torch.argsort(scores, descending=True, stable=True).tolist():
        full = F.interpolate(logits[index][None, None], size=(height, width), mode="bilinear", align_corners=False)
        object_mask = (full[0, 0] > 0).cpu().numpy()
        found.append(Instance(mask=object_mask, box=_box_of(object_mask), score=float(scores[index]), phrase=CLICK_PHRASE))
    return found
