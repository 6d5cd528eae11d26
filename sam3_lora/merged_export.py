"""A LoRA adapter merged into SAM3: a full `Sam3Model` folder that loads without PEFT.

Every LoRA linear becomes W' = W + (alpha / r) * B A (peft's `merge_and_unload`), so the
merged model computes what base + adapter computes, up to float rounding. The folder holds
what `Sam3Model.from_pretrained` and a processor need:

  config.json, model.safetensors       save_pretrained of the merged model
  tokenizer files                      the base's tokenizer, save_pretrained
  processor_config.json, preprocessor_config.json, LICENSE
                                       copied from the base when it has them (the real SAM3
                                       ships them; SAM's licence must travel with its weights)
  README.md, loss_curve.png            the adapter's card, as a card of a transformers model

Written atomically (sam3_lora.adapter_io.replace_folder_atomically).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from sam3_lora.adapter_io import CONFIG_FILE, load_adapter, replace_folder_atomically
from sam3_lora.hub_ids import base_model_id, is_hub_id
from sam3_lora.model import load_sam3
from sam3_lora.model_card import CARD_FILE, CURVE_FILE, merged_card_text, write_text_atomically

log = logging.getLogger(__name__)

BASE_EXTRA_FILES = ("processor_config.json", "preprocessor_config.json", "LICENSE")


def adapter_base(adapter: Path) -> str:
    """The base PEFT recorded in adapter_config.json (a Hub id, or the folder it was trained on)."""
    config = json.loads((Path(adapter) / CONFIG_FILE).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter / CONFIG_FILE} names no base_model_name_or_path; give the base model (--model)")
    return base


def _base_file(source: str, name: str) -> Path | None:
    """`name` of the base model: from its folder, or downloaded from its Hub repo; None when it has none."""
    if Path(source).is_dir():
        path = Path(source) / name
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(source, name))
    except EntryNotFoundError:
        return None


def export_merged(adapter: str | Path, out: str | Path, model_source: str | None = None,
                  base_model: str | None = None) -> Path:
    """Write base + `adapter` merged into `out`; returns `out`.

    model_source: the base weights (hub id or folder); default: the adapter's base_model_name_or_path.
    base_model: the Hub id the card names; default: `model_source` when it is one, else the adapter's
    recorded base when that is one (sam3_lora.hub_ids).
    """
    adapter, out = Path(adapter), Path(out)
    recorded = adapter_base(adapter) if (adapter / CONFIG_FILE).is_file() else None
    source = model_source or recorded
    if source is None:
        raise ValueError(f"adapter folder {adapter} lacks {CONFIG_FILE}; is it a PEFT adapter folder?")
    hub_id = base_model_id(source, base_model) or (recorded if recorded and is_hub_id(recorded) else None)
    model, tokenizer = load_sam3(source)
    merged = load_adapter(model, adapter, merge=True)
    adapter_card = adapter / CARD_FILE
    card = merged_card_text(adapter_card.read_text(encoding="utf-8") if adapter_card.is_file() else None, hub_id,
                            title=f"SAM3 merged with {adapter.name}")

    def write(temp: Path) -> None:
        merged.save_pretrained(temp)
        tokenizer.save_pretrained(temp)
        for name in BASE_EXTRA_FILES:
            found = _base_file(source, name)
            if found is not None:
                shutil.copyfile(found, temp / name)
        if (adapter / CURVE_FILE).is_file():
            shutil.copyfile(adapter / CURVE_FILE, temp / CURVE_FILE)
        write_text_atomically(temp / CARD_FILE, card)

    replace_folder_atomically(out, write)
    log.info("merged %s into %s: wrote %s", adapter, source, out)
    return out
