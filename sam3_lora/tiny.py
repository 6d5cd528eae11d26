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
from transformers import CLIPTokenizer, Sam3Config, Sam3Model

TINY_IMAGE_SIZE = 112
PATCH_SIZE = 14
WINDOW_SIZE = 4


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


def save_tiny_sam3(folder: str | Path, image_size: int = TINY_IMAGE_SIZE, seed: int = 0, num_queries: int = 10) -> Path:
    """Build the tiny SAM3 with a fixed seed and write model + tokenizer to `folder`; return it."""
    folder = Path(folder)
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    model = Sam3Model(tiny_sam3_config(image_size, vocab_size=len(tokenizer), num_queries=num_queries))
    _reset_to_torch_defaults(model)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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
