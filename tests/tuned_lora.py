"""A LoRA model of the tiny SAM3 that changes its outputs: peft starts B at zero (the adapter then
is the base model), so tests that compare base, adapter and merged model draw B at random."""
from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import Sam3Model

from sam3_lora.lora import LoraSettings, apply_lora


def tuned_lora(base_folder: str | Path, seed: int) -> PeftModel:
    """Decoder LoRA (rank 4, alpha 8) on the SAM3 in `base_folder`, every lora_B ~ N(0, 0.5), in eval mode."""
    torch.manual_seed(seed)
    model = apply_lora(Sam3Model.from_pretrained(base_folder), LoraSettings(components="decoder", rank=4, alpha=8))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    return model.eval()
