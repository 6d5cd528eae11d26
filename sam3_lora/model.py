"""Load SAM3 (weights + tokenizer) from a hub id or a local folder.

One loading path for everything: the real `facebook/sam3`, a local copy of it, and
the tiny random SAM3 that `sam3_lora.tiny` saves for tests and the offline demo.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer, Sam3Model

DEFAULT_MODEL = "facebook/sam3"
TEXT_MAX_TOKENS = 32  # SAM3's CLIP text encoder is padded to 32 tokens; longer raises.

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The SAM3 weights or tokenizer could not be loaded from the given source."""


def load_sam3(
    source: str | Path = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Sam3Model, object]:
    """Return (Sam3Model in eval mode on `device`, its tokenizer).

    `source` is a hub id (needs the user's token for the gated facebook/sam3) or a
    folder written by `save_pretrained` that also holds the tokenizer files.
    """
    source = str(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = Sam3Model.from_pretrained(source, dtype=dtype)
    except Exception as error:  # hub, network, missing files, wrong architecture
        raise ModelLoadError(f"cannot load SAM3 from {source!r}: {type(error).__name__}: {error}") from error
    model.to(device).eval()
    log.info("loaded SAM3 from %s (%.1fM parameters)", source, sum(p.numel() for p in model.parameters()) / 1e6)
    return model, tokenizer


def model_image_size(model: Sam3Model) -> int:
    """Input side length the model was built for (1008 for the real SAM3)."""
    return int(model.config.vision_config.backbone_config.image_size)


def tokenize_phrases(tokenizer, phrases: list[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Noun phrases -> {'input_ids': [B,32] long, 'attention_mask': [B,32] long}.

    Raises ValueError naming the phrase when it does not fit in 32 tokens.
    """
    encoded = tokenizer(list(phrases), padding="max_length", max_length=TEXT_MAX_TOKENS, truncation=False, return_tensors="pt")
    if encoded["input_ids"].shape[1] > TEXT_MAX_TOKENS:
        lengths = encoded["attention_mask"].sum(1).tolist()
        too_long = [p for p, n in zip(phrases, lengths) if n > TEXT_MAX_TOKENS]
        raise ValueError(f"phrase {too_long[0]!r} is longer than {TEXT_MAX_TOKENS} tokens; shorten it")
    return {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}
