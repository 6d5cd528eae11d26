"""Text / box prompts on one image -> SAM3 instances (mask, box, score, phrase).

For each query q of SAM3 (pred_* of one prompt, Q queries):
  score_q = sigmoid(pred_logits[q]) * sigmoid(presence_logits)   (presence: "the concept is in the image")
  mask_q  = bilinear_upsample(pred_masks[q] [4g,4g] -> original [H,W]) > 0   (logit 0 = probability 0.5)
  box_q   = clamp(pred_boxes[q], 0, 1) * (W, H, W, H)   (xyxy; cx +- w/2 may pass the border)
Queries with score >= score_threshold are kept, then greedy NMS (on the binarised
low-resolution masks or on the boxes), then sorted by score.

Box prompts are xyxy in original pixels with label 1 (positive) or 0 (negative);
the model takes them normalised by the original (W, H) as cxcywh, as Sam3Processor
sends them. A box-only prompt sends the text "visual", as Sam3Processor does.
SAM3 treats boxes as *exemplars of a concept*: it returns every instance that
looks like the boxed one, not only the boxed object.

Sam3Model takes no point prompts (its forward has no input_points): clicks that mean
"this object" go to SAM3's tracker, sam3_lora.interactive, which reads the same cached
vision features.

The vision backbone dominates the cost (the ViT; 454M of SAM3's 840M parameters),
so `BackboneCache` keeps vision features per (image pixels, model, vision-adapter
state) and several prompts on one image pay for the backbone once.
"""
from __future__ import annotations

import contextlib
import hashlib
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from sam3_lora.model import load_sam3, model_image_size, tokenize_phrases
from sam3_lora.nms import box_nms, mask_nms
from sam3_lora.preprocess import image_to_tensor, normalize_pixels
from sam3_lora.roi_align import ensure_box_prompt_support

VISUAL_PROMPT = "visual"  # the text Sam3Processor pairs with box-only prompts
NMS_MODES = ("mask", "box", None)


@dataclass(frozen=True, eq=False)  # eq=False: `==` on a numpy mask is elementwise, so compare by identity
class Instance:
    """One proposed object. mask: bool [H,W] at the original image size; box: xyxy in original pixels."""

    mask: np.ndarray
    box: tuple[float, float, float, float]
    score: float
    phrase: str


def sam3_of(model: torch.nn.Module) -> torch.nn.Module:
    """The Sam3Model inside `model` (a PeftModel's LoRA layers live in it, so its forward applies them)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def image_key(pixels: torch.Tensor) -> str:
    """sha256 of a uint8 image tensor [3,H,W] (its shape and bytes)."""
    digest = hashlib.sha256(str(tuple(pixels.shape)).encode())
    digest.update(pixels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def vision_adapter_state(model: torch.nn.Module) -> tuple:
    """What, besides the base weights, decides the vision features: the LoRA layers inside the vision encoder.

    Per LoRA layer: (active adapters, disabled, merged adapters, ids of the active lora_A weights).
    Empty when the vision encoder has no LoRA (then base and PeftModel share cached features).
    """
    state = []
    for name, module in sam3_of(model).vision_encoder.named_modules():
        if isinstance(module, BaseTunerLayer):
            lora_a = getattr(module, "lora_A", {})
            weights = tuple(id(lora_a[a].weight) for a in module.active_adapters if a in lora_a)
            state.append((name, tuple(module.active_adapters), module.disable_adapters,
                          tuple(module.merged_adapters), weights))
    return tuple(state)


class BackboneCache:
    """Small LRU of SAM3 vision features, keyed by (image_key, id of the Sam3Model, vision_adapter_state).

    A weak reference guards against a new model reusing a freed model's id. Weights
    changed in place (a training step, merge_and_unload, another adapter loaded under
    the same name) are not detected: call `clear()` then. Memory per entry for the real
    SAM3 at 1008 px: ~0.25 GB at float32 (FPN maps 288², 144², 72², 36² x 256 channels, as many position
    encodings, and the 72² x 1024 ViT output).
    """

    def __init__(self, max_images: int = 4) -> None:
        if max_images < 1:
            raise ValueError(f"BackboneCache max_images must be >= 1, got {max_images}")
        self.max_images = max_images
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple, tuple[weakref.ref, Sam3VisionEncoderOutput]] = OrderedDict()

    def _key(self, model: torch.nn.Module, key_of_image: str) -> tuple:
        return (key_of_image, id(sam3_of(model)), vision_adapter_state(model))

    def get(self, model: torch.nn.Module, key_of_image: str) -> Sam3VisionEncoderOutput | None:
        key = self._key(model, key_of_image)
        entry = self._entries.get(key)
        if entry is None or entry[0]() is not sam3_of(model):
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, model: torch.nn.Module, key_of_image: str, features: Sam3VisionEncoderOutput) -> None:
        key = self._key(model, key_of_image)
        self._entries[key] = (weakref.ref(sam3_of(model)), features)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_images:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@contextlib.contextmanager
def _inference(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode + inference_mode for the block; the caller's train/eval mode is restored after."""
    was_training = model.training
    if was_training:  # only when needed: transformers' train()/eval() walks every module (~1.5 ms on the tiny model)
        model.eval()
    try:
        with torch.inference_mode():
            yield sam3_of(model)
    finally:
        if was_training:
            model.train()


def vision_features(model: torch.nn.Module, pixels: torch.Tensor, cache: BackboneCache | None = None) -> Sam3VisionEncoderOutput:
    """uint8 image [3,H,W] -> the backbone's features (batch 1), from `cache` when it holds them."""
    sam3 = sam3_of(model)
    key_of_image = image_key(pixels) if cache is not None else ""
    if cache is not None and (cached := cache.get(model, key_of_image)) is not None:
        return cached
    pixel_values = normalize_pixels(pixels, model_image_size(sam3))[None].to(device=sam3.device, dtype=sam3.dtype)
    features = sam3.get_vision_features(pixel_values=pixel_values)
    if cache is not None:
        cache.put(model, key_of_image, features)
    return features


def _phrase_passes(sam3, tokenizer, features: Sam3VisionEncoderOutput, phrases: list[str], phrase_batch: int):
    """(outputs, phrases) of one DETR pass per chunk of `phrase_batch` phrases on one image's features."""
    for start in range(0, len(phrases), phrase_batch):
        chunk = phrases[start:start + phrase_batch]
        tokens = tokenize_phrases(tokenizer, chunk, device=sam3.device)
        yield sam3(vision_embeds=_features_for_batch(features, len(chunk)), **tokens), chunk


def _features_for_batch(features: Sam3VisionEncoderOutput, batch: int) -> Sam3VisionEncoderOutput:
    """Batch-1 features seen as `batch` copies (expand: a view, no copy of the maps)."""
    def grow(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.expand(batch, *tensor.shape[1:])

    return Sam3VisionEncoderOutput(
        last_hidden_state=grow(features.last_hidden_state),
        fpn_hidden_states=tuple(grow(t) for t in features.fpn_hidden_states),
        fpn_position_encoding=tuple(grow(t) for t in features.fpn_position_encoding),
    )


def box_prompts_to_model(
    boxes: Sequence[Sequence[float]], box_labels: Sequence[int] | None, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """xyxy pixel boxes [N] (clipped to the image) -> (input_boxes [1,N,4] cxcywh in 0..1, input_boxes_labels [1,N])."""
    height, width = image_size
    labels = [1] * len(boxes) if box_labels is None else list(box_labels)
    if len(labels) != len(boxes):
        raise ValueError(f"got {len(boxes)} boxes but {len(labels)} box labels")
    rows = []
    for index, (box, label) in enumerate(zip(boxes, labels)):
        if len(box) != 4 or not all(np.isfinite(float(v)) for v in box):
            raise ValueError(f"box {index} {list(box)!r} must be 4 finite numbers x1, y1, x2, y2 (pixels)")
        if int(label) not in (0, 1):
            raise ValueError(f"box {index} has label {label!r}; use 1 (positive) or 0 (negative)")
        x1, x2 = (min(max(float(v), 0.0), width) for v in (box[0], box[2]))
        y1, y2 = (min(max(float(v), 0.0), height) for v in (box[1], box[3]))
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"box {index} {list(box)!r} is empty inside the {width}x{height} image (need x2 > x1, y2 > y1)")
        rows.append([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height])
    return torch.tensor([rows], dtype=torch.float32), torch.tensor([[int(v) for v in labels]], dtype=torch.long)


def _instances_of_row(outputs, row: int, image_size: tuple[int, int], phrase: str, score_threshold: float,
                      nms: str | None, nms_iou: float) -> list[Instance]:
    """Row `row` of Sam3Model outputs -> kept, NMS-ed, score-sorted instances (formulas in the module docstring)."""
    height, width = image_size
    scores = outputs.pred_logits[row].float().sigmoid() * outputs.presence_logits[row].float().sigmoid()  # [Q]
    candidates = torch.nonzero(scores >= score_threshold).flatten()
    scores = scores[candidates]
    low_res_logits = outputs.pred_masks[row, candidates].float()                                 # [K,4g,4g]
    boxes = outputs.pred_boxes[row, candidates].float().clamp(0, 1) * scores.new_tensor([width, height, width, height])
    if nms == "mask":  # IoU on the 4g x 4g masks: same ranking, far cheaper than at the original size
        order = mask_nms(low_res_logits > 0, scores, nms_iou)
    elif nms == "box":
        order = box_nms(boxes, scores, nms_iou)
    else:
        order = torch.sort(scores, descending=True, stable=True).indices
    instances = []
    for index in order.tolist():  # one at a time: K full-size float masks at once can be GBs
        full = F.interpolate(low_res_logits[index][None, None], size=(height, width), mode="bilinear", align_corners=False)
        instances.append(Instance(mask=(full[0, 0] > 0).cpu().numpy(), box=tuple(boxes[index].tolist()),
                                  score=float(scores[index]), phrase=phrase))
    return instances


def _check_options(score_threshold: float, nms: str | None, nms_iou: float) -> None:
    if nms not in NMS_MODES:
        raise ValueError(f"nms must be one of {NMS_MODES}, got {nms!r}")
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
    if not 0.0 <= nms_iou <= 1.0:
        raise ValueError(f"nms_iou must be in [0, 1], got {nms_iou}")


def predict(
    model: torch.nn.Module,
    tokenizer,
    image: Image.Image | np.ndarray,
    prompt: str | None,
    boxes: Sequence[Sequence[float]] | None = None,
    box_labels: Sequence[int] | None = None,
    score_threshold: float = 0.5,
    nms: str | None = "mask",
    nms_iou: float = 0.5,
    cache: BackboneCache | None = None,
) -> list[Instance]:
    """Instances of `prompt` (a noun phrase) and/or box prompts in `image`, sorted by decreasing score.

    boxes: xyxy in original pixels; box_labels: 1 positive / 0 negative (default all 1).
    `model` is a Sam3Model or a PeftModel around one (its adapter is applied).
    """
    _check_options(score_threshold, nms, nms_iou)
    if prompt is not None and not prompt.strip():
        raise ValueError("prompt is empty; give a noun phrase such as 'red car', or None with box prompts")
    if prompt is None and not boxes:
        raise ValueError("nothing to look for: give a text prompt, box prompts, or both")
    pixels = image_to_tensor(image)
    image_size = (pixels.shape[1], pixels.shape[2])
    phrase = prompt.strip() if prompt is not None else VISUAL_PROMPT
    geometry = {}
    if boxes:
        ensure_box_prompt_support()
        input_boxes, input_labels = box_prompts_to_model(boxes, box_labels, image_size)
        geometry = {"input_boxes": input_boxes, "input_boxes_labels": input_labels}
    with _inference(model) as sam3:
        features = vision_features(model, pixels, cache)
        tokens = tokenize_phrases(tokenizer, [phrase], device=sam3.device)
        geometry = {name: value.to(sam3.device) for name, value in geometry.items()}
        if "input_boxes" in geometry:
            geometry["input_boxes"] = geometry["input_boxes"].to(sam3.dtype)
        outputs = sam3(vision_embeds=features, **tokens, **geometry)
        return _instances_of_row(outputs, 0, image_size, phrase, score_threshold, nms, nms_iou)


def predict_many(
    model: torch.nn.Module,
    tokenizer,
    image: Image.Image | np.ndarray,
    prompts: Sequence[str],
    score_threshold: float = 0.5,
    nms: str | None = "mask",
    nms_iou: float = 0.5,
    cache: BackboneCache | None = None,
    batch_size: int = 8,
) -> list[list[Instance]]:
    """One backbone pass, then the phrases in batches of `batch_size`; result i holds the instances of prompts[i]."""
    _check_options(score_threshold, nms, nms_iou)
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of noun phrases")
    phrases = [str(p).strip() for p in prompts]
    for index, phrase in enumerate(phrases):
        if not phrase:
            raise ValueError(f"prompt {index} is empty; give a noun phrase")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pixels = image_to_tensor(image)
    image_size = (pixels.shape[1], pixels.shape[2])
    results: list[list[Instance]] = []
    with _inference(model) as sam3:
        features = vision_features(model, pixels, cache)
        for outputs, chunk in _phrase_passes(sam3, tokenizer, features, phrases, batch_size):
            results.extend(_instances_of_row(outputs, row, image_size, phrase, score_threshold, nms, nms_iou)
                           for row, phrase in enumerate(chunk))
    return results


def load_predictor(
    source: str | Path, adapter: str | Path | None = None, device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32, merge: bool = False,
) -> tuple[torch.nn.Module, object]:
    """(model in eval mode, tokenizer) for `predict`: SAM3 from `source`, plus the PEFT adapter folder if given.

    The adapter is checked strictly (sam3_lora.adapter_io.load_adapter: any missing or
    unexpected LoRA key raises); merge=True folds it into the weights (a plain Sam3Model).
    """
    model, tokenizer = load_sam3(source, device=device, dtype=dtype)
    ensure_box_prompt_support()
    if adapter is not None:
        from sam3_lora.adapter_io import load_adapter  # peft-heavy; only when an adapter is asked for

        model = load_adapter(model, adapter, merge=merge)
    model.eval()
    return model, tokenizer
