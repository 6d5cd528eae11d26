"""One backbone (ViT) pass per image for a micro-batch of find-queries, and gradient checkpointing.

`GroupedSam3` wraps the PEFT model for training (DDP wraps it in turn, so its whole
forward is one DDP forward):

    features = vision_encoder(pixel_values [N,3,S,S])            N images, once each
    outputs  = Sam3Model(vision_embeds = features[image_index],   B find-queries, image_index [B]
                         input_ids [B,32], attention_mask [B,32])

With N = 1 the features are expanded (a view, as `predict_many` does); otherwise
rows are gathered with index_select. Gradients flow from every query back into the
one backbone pass (the LoRA of the full preset sums them), which equals running the
backbone once per query on copies of the image (tested).

`data.cache_backbone` (a ViT without LoRA, no augmentation): each image's features
are computed once without a graph, kept in memory by image file, and reused every
epoch in training mode.
"""
from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from sam3_lora.layer_outputs import unwrap_sam3


def map_features(features: Sam3VisionEncoderOutput, function) -> Sam3VisionEncoderOutput:
    """Apply `function` to every batch-first tensor of the features (last_hidden_state, FPN maps and encodings)."""
    return Sam3VisionEncoderOutput(
        last_hidden_state=function(features.last_hidden_state),
        fpn_hidden_states=tuple(function(t) for t in features.fpn_hidden_states),
        fpn_position_encoding=tuple(function(t) for t in features.fpn_position_encoding),
    )


def features_for_queries(features: Sam3VisionEncoderOutput, image_index: torch.Tensor) -> Sam3VisionEncoderOutput:
    """Features of N images [N,...] -> features of B queries [B,...], row b = image image_index[b]."""
    if features.fpn_hidden_states[0].shape[0] == 1:
        return map_features(features, lambda t: t.expand(len(image_index), *t.shape[1:]))
    return map_features(features, lambda t: t.index_select(0, image_index))


class GroupedSam3(torch.nn.Module):
    """The PEFT model (as `.module`, so unwrap_sam3 finds the Sam3Model) run with one backbone pass per image."""

    def __init__(self, module: torch.nn.Module, cache_backbone: bool = False) -> None:
        super().__init__()
        self.module = module
        self.feature_cache: dict[str, Sam3VisionEncoderOutput] | None = {} if cache_backbone else None

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                image_index: torch.Tensor | None = None, image_keys: list[str] | None = None):
        """image_index None: one image row per query (plain Sam3Model call)."""
        if image_index is None:
            return self.module(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        features = self._vision_features(pixel_values, image_keys)
        return self.module(vision_embeds=features_for_queries(features, image_index), input_ids=input_ids,
                           attention_mask=attention_mask)

    def _vision_features(self, pixel_values: torch.Tensor, image_keys: list[str] | None) -> Sam3VisionEncoderOutput:
        sam3 = unwrap_sam3(self.module)
        if self.feature_cache is None or not self.training or image_keys is None:
            return sam3.get_vision_features(pixel_values=pixel_values)
        missing = [row for row, key in enumerate(image_keys) if key not in self.feature_cache]
        if missing:
            with torch.no_grad():
                computed = sam3.get_vision_features(pixel_values=pixel_values[missing])
            for position, row in enumerate(missing):
                self.feature_cache[image_keys[row]] = map_features(computed, lambda t: t[position:position + 1].clone())
        cached = [self.feature_cache[key] for key in image_keys]
        if len(cached) == 1:
            return cached[0]
        return Sam3VisionEncoderOutput(
            last_hidden_state=torch.cat([c.last_hidden_state for c in cached]),
            fpn_hidden_states=tuple(torch.cat(level) for level in zip(*(c.fpn_hidden_states for c in cached))),
            fpn_position_encoding=tuple(torch.cat(level) for level in zip(*(c.fpn_position_encoding for c in cached))),
        )


def checkpoint_forward(module: torch.nn.Module, enabled: bool) -> None:
    """Run `module` under non-reentrant torch.utils.checkpoint in training mode with grad enabled (enabled=True),
    or as it was (False). Non-reentrant: any inputs and outputs, DDP-safe, RNG replayed in the recompute."""
    original = getattr(module, "_forward_before_checkpointing", None)
    if original is None:
        original = module._forward_before_checkpointing = module.forward
    if not enabled:
        module.forward = original
        return

    @functools.wraps(original)
    def forward(*args, **kwargs):
        if module.training and torch.is_grad_enabled():
            return checkpoint(original, *args, use_reentrant=False, **kwargs)
        return original(*args, **kwargs)

    module.forward = forward


def set_vit_checkpointing(model: torch.nn.Module, enabled: bool) -> int:
    """Turn gradient checkpointing on or off; returns the number of checkpointed modules.

    Checkpointed: the 32 ViT layers (each a transformers GradientCheckpointingLayer:
    flag + checkpoint function), and, measured as the next largest keepers at 1008 px
    (bench/real_size_bench.py), every DETR encoder and decoder layer and the mask decoder,
    whose activations grow with the number of find-queries (5184 image tokens x 256 per
    query per encoder layer; 288^2 pixel-decoder maps per query). Only each module's inputs
    are kept; it is computed again in the backward (non-reentrant torch.utils.checkpoint:
    works with DDP and frozen inputs, and replays the RNG so dropout is the same).
    `Sam3Model.gradient_checkpointing_enable()` raises (SAM3 does not declare support), hence this.
    """
    sam3 = unwrap_sam3(model)
    layers = sam3.vision_encoder.backbone.layers
    for layer in layers:
        layer.gradient_checkpointing = bool(enabled)
        layer._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
    others = [*sam3.detr_encoder.layers, *sam3.detr_decoder.layers, sam3.mask_decoder]
    for module in others:
        checkpoint_forward(module, enabled)
    return len(layers) + len(others)
