"""A tiny randomly initialised SAM3 (~0.3M parameters) for tests and the offline demo.

It is saved to a folder with `save_pretrained`, so it is loaded through the same
`load_sam3` as the real weights. Its masks mean nothing until it is trained.
Sizes follow ../shared/docs/sam3.md: all hidden sizes 32 (GroupNorm(8) needs
multiples of 8), ViT head dim 16 (axial RoPE needs a multiple of 4).
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer, Sam3Config, Sam3Model, Sam3TrackerConfig, Sam3TrackerModel

TINY_IMAGE_SIZE = 112
PATCH_SIZE = 14
WINDOW_SIZE = 4
TRACKER_SUBFOLDER = "tracker"  # the tiny click tracker; the real facebook/sam3 holds both in one checkpoint


def build_tiny_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges: 2 specials + 256 bytes + 256 end-of-word bytes = 514 tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in alphabet:
            vocab[char + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_sam3_config(image_size: int = TINY_IMAGE_SIZE, vocab_size: int = 514, num_queries: int = 10) -> Sam3Config:
    """Config of the tiny SAM3; `image_size` must be a multiple of PATCH_SIZE*WINDOW_SIZE (56)."""
    if image_size % (PATCH_SIZE * WINDOW_SIZE):
        raise ValueError(f"image_size {image_size} must be a multiple of {PATCH_SIZE * WINDOW_SIZE} (patch 14 x window 4)")
    width = 32
    block = {"hidden_size": width, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    return Sam3Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model", "hidden_size": width, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": image_size,
                "patch_size": PATCH_SIZE, "window_size": WINDOW_SIZE, "global_attn_indexes": [1],
                "pretrain_image_size": image_size,
            },
            "fpn_hidden_size": width,
        },
        text_config={
            "model_type": "clip_text_model", "vocab_size": vocab_size, "hidden_size": width,
            "intermediate_size": 64, "projection_dim": width, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": 0,
            "eos_token_id": 1, "pad_token_id": 1,
        },
        geometry_encoder_config=dict(block),
        detr_encoder_config=dict(block),
        detr_decoder_config={**block, "num_layers": 2, "num_queries": num_queries},
        mask_decoder_config={"hidden_size": width, "num_upsampling_stages": 3, "num_attention_heads": 2},
    )


def tiny_tracker_config(sam3_config: Sam3Config) -> Sam3TrackerConfig:
    """Config of the tiny click tracker (Sam3TrackerModel) that goes with a tiny SAM3 config.

    Its vision encoder is the SAM3 one (same ViT; its own FPN neck, as the real checkpoint's
    `tracker_neck`); feature maps at 4x, 2x, 1x the ViT grid g = image_size / 14; the mask
    decoder and prompt encoder are 32 wide like the rest.
    """
    vision = sam3_config.vision_config.to_dict()
    grid = sam3_config.vision_config.backbone_config.image_size // PATCH_SIZE
    vision["backbone_feature_sizes"] = [[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]]
    width = sam3_config.vision_config.fpn_hidden_size
    return Sam3TrackerConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": width, "image_size": grid * PATCH_SIZE, "patch_size": PATCH_SIZE,
                               "mask_input_channels": 16},
        mask_decoder_config={"hidden_size": width, "mlp_dim": 64, "num_attention_heads": 2,
                             "iou_head_hidden_dim": width},
    )


def save_tiny_sam3(folder: str | Path, image_size: int = TINY_IMAGE_SIZE, seed: int = 0, num_queries: int = 10) -> Path:
    """Build the tiny SAM3 with a fixed seed and write model + tokenizer to `folder`, and its click
    tracker to `folder`/tracker (see save_tiny_tracker); return `folder`."""
    folder = Path(folder)
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    model = Sam3Model(tiny_sam3_config(image_size, vocab_size=len(tokenizer), num_queries=num_queries))
    _reset_to_torch_defaults(model)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_tiny_tracker(folder, model, seed=seed)
    return folder


def save_tiny_tracker(folder: str | Path, sam3: Sam3Model | None = None, seed: int = 0) -> Path:
    """Write the tiny click tracker for the tiny SAM3 in `folder` to `folder`/tracker; return that path.

    Its ViT is a copy of the SAM3 one (the real checkpoint stores one ViT for both); its
    neck, prompt encoder and mask decoder are random (torch default init, seeded).
    """
    folder = Path(folder)
    sam3 = Sam3Model.from_pretrained(folder) if sam3 is None else sam3
    torch.manual_seed(seed + 1)
    tracker = Sam3TrackerModel(tiny_tracker_config(sam3.config))
    _reset_to_torch_defaults(tracker)
    tracker.vision_encoder.backbone.load_state_dict(sam3.vision_encoder.backbone.state_dict())
    tracker.save_pretrained(folder / TRACKER_SUBFOLDER)
    return folder / TRACKER_SUBFOLDER


def _reset_to_torch_defaults(model: torch.nn.Module) -> None:
    """Give every Linear / Conv / Embedding torch's default init: Linear and Conv
    std ~ 1/sqrt(3*fan_in), Embedding N(0, 1).

    transformers draws them all from N(0, 0.02), made for 1024-wide layers. At width 32:
    - each Linear shrinks its input ~8x, the heads' outputs sit at ~0 whatever the
      input, and a LoRA fine-tune cannot move the presence score (measured: presence
      loss stuck at log 2 for 60 steps);
    - the DETR queries and reference points start equal: every reference box is
      sigmoid(~0) = 0.5 and the 0.02-sized query embeddings vanish next to the
      attention outputs, so all queries predict one box (measured after a fine-tune:
      box std over 30 queries 0.004 in eval mode; train-mode dropout alone spread
      them, val GIoU loss 1.2 in eval vs 0.57 in train mode).
    Fan-in scaling keeps signals O(1) and N(0, 1) embeddings give distinct queries,
    as the real SAM3's trained ones are, so the tiny model is a learnable stand-in.
    """
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Embedding)):
            module.reset_parameters()
