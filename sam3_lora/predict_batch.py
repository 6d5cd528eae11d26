"""Every concept on a batch of images, one backbone pass per image: pre-labelling a dataset.

    pixel_values [B,3,S,S]  = normalize_pixels(image_i) stacked     (S = model_image_size)
    features               = get_vision_features(pixel_values)      ONE batched backbone pass
    for image i, for phrases in chunks of `phrase_batch`:
        Sam3Model(vision_embeds = features[i] expanded to the chunk, input_ids [P,32])
        instances[i][p] = predict._instances_of_row(...)             (score = sigmoid(logit) * sigmoid(presence))
        presence[i][p]  = sigmoid(presence_logits[p])                (the concept is in the image)

The vision backbone is most of SAM3's cost (454M of 840M parameters), so the batch goes
through it together (one GPU launch for B images) and each image pays for it once
whatever the number of concepts. `predict_many` is the one-image case of the same thing.
Used by the studio's pre-label job and by `sam3-lora predict --images/--coco` (predict_folder.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from sam3_lora.model import model_image_size
from sam3_lora.predict import Instance, _check_options, _inference, _instances_of_row, _phrase_passes
from sam3_lora.preprocess import image_to_tensor, normalize_pixels


@dataclass(frozen=True)
class ImageProposals:
    """What the model proposes on one image: per phrase, its instances (score-sorted) and presence in [0, 1]."""

    instances: list[list[Instance]]
    presence: list[float]


def _features_of(features: Sam3VisionEncoderOutput, index: int) -> Sam3VisionEncoderOutput:
    """Image `index` of batched features, as batch 1 (views, no copies)."""
    def pick(tensor: torch.Tensor) -> torch.Tensor:
        return tensor[index:index + 1]

    return Sam3VisionEncoderOutput(
        last_hidden_state=pick(features.last_hidden_state),
        fpn_hidden_states=tuple(pick(t) for t in features.fpn_hidden_states),
        fpn_position_encoding=tuple(pick(t) for t in features.fpn_position_encoding),
    )


def propose_batch(
    model: torch.nn.Module,
    tokenizer,
    images: Sequence[Image.Image | np.ndarray],
    phrases: Sequence[str],
    score_threshold: float = 0.3,
    nms: str | None = "mask",
    nms_iou: float = 0.5,
    phrase_batch: int = 8,
) -> list[ImageProposals]:
    """Instances of every phrase on every image (module docstring); result i belongs to images[i].

    Images may differ in size: each is resized to the model's input for the backbone and its
    masks / boxes come back at its own size.
    """
    _check_options(score_threshold, nms, nms_iou)
    if isinstance(phrases, str) or not phrases:
        raise ValueError("phrases must be a non-empty list of noun phrases")
    phrases = [str(p).strip() for p in phrases]
    if not all(phrases):
        raise ValueError(f"phrase {phrases.index('')} is empty; give a noun phrase")
    if phrase_batch < 1:
        raise ValueError(f"phrase_batch must be >= 1, got {phrase_batch}")
    if not images:
        return []
    pixels = [image_to_tensor(image) for image in images]
    results: list[ImageProposals] = []
    with _inference(model) as sam3:
        size = model_image_size(sam3)
        pixel_values = torch.stack([normalize_pixels(p, size) for p in pixels]).to(device=sam3.device, dtype=sam3.dtype)
        features = sam3.get_vision_features(pixel_values=pixel_values)
        for index, image_pixels in enumerate(pixels):
            image_size = (image_pixels.shape[1], image_pixels.shape[2])
            one = _features_of(features, index)
            instances: list[list[Instance]] = []
            presence: list[float] = []
            for outputs, chunk in _phrase_passes(sam3, tokenizer, one, phrases, phrase_batch):
                instances.extend(_instances_of_row(outputs, row, image_size, phrase, score_threshold, nms, nms_iou)
                                 for row, phrase in enumerate(chunk))
                presence.extend(outputs.presence_logits[:, 0].float().sigmoid().tolist())
            results.append(ImageProposals(instances=instances, presence=presence))
    return results
