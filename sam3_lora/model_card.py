"""The model card of a trained adapter (README.md + loss_curve.png), one writer for the CLI and the studio.

README.md = YAML metadata the Hub reads (`huggingface_hub.ModelCard.load` parses it) + a body
built from the run's own numbers:

  ---
  library_name: peft                    (transformers for a merged model)
  base_model: facebook/sam3             a Hub id, never a local path (sam3_lora.hub_ids); left
                                        out when the weights are not from the Hub (the tiny SAM3)
  license: other, license_name: sam-license, license_link: SAM3's LICENSE (the base's licence
                                        binds every derivative)
  pipeline_tag: mask-generation, tags: sam3, lora, ..., base_model:adapter:<id>
  model-index: segm / bbox mAP (and mAP50) after training on the validation split, when measured
  ---
  how to load it; before/after mAP overall and per concept; proposals accepted / edited /
  rejected per earlier model and concept (when the studio counted them); the data summary (images,
  instances per concept, negatives, warnings); loss_curve.png; the effective config (YAML).

`write_model_card` also points the folder's adapter_config.json at the same Hub id (PEFT
wrote the local path it loaded, which `AutoPeftModel` on another machine cannot follow).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import EvalResult

from sam3_lora.adapter_io import CONFIG_FILE, fsync_path
from sam3_lora.loss_plot import draw_loss_curve

CARD_FILE = "README.md"
CURVE_FILE = "loss_curve.png"
SAM_LICENSE = {"license": "other", "license_name": "sam-license",
               "license_link": "https://huggingface.co/facebook/sam3/blob/main/LICENSE"}
PIPELINE_TAG = "mask-generation"  # text / box prompt -> instance masks, as the Hub files SAM models
TAGS = ["sam3", "lora", "segmentation", "image-segmentation", "sam3-lora-studio"]
MAP_KEYS = (("segm_mAP", "segm mAP"), ("segm_mAP50", "segm mAP50"), ("bbox_mAP", "bbox mAP"), ("bbox_mAP50", "bbox mAP50"))


@dataclass(frozen=True)
class ModelCardFacts:
    """What a card says, as plain values (the CLI takes them from TrainResult, the worker from its rows).

    history: the "step" / "eval" events of train(); dataset: TrainData.summary ({"train": ..., "val": ...,
    "warnings": [...]}); eval_before / eval_after: run_evaluation dicts (segm_mAP, bbox_mAP, per_concept, ...).
    """

    title: str
    base_model: str | None
    config: dict
    dataset_name: str
    status: str
    history: list[dict] = field(default_factory=list)
    dataset: dict = field(default_factory=dict)
    eval_before: dict | None = None
    eval_after: dict | None = None
    # {model name: {concept: {"accepted": n, "edited": n, "rejected": n}}}: how people judged the proposals
    # of the models before this one (the studio counts them; the command line has none)
    review_outcomes: dict | None = None


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _shown(value) -> str:
    number = _finite(value)
    return "-" if number is None else f"{number:.4f}"


def _cell(text) -> str:
    """Text safe inside a markdown table cell: no line breaks, '|' escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def card_metadata(facts: ModelCardFacts, library_name: str = "peft") -> ModelCardData:
    """The YAML header. `library_name` "peft" for an adapter folder, "transformers" for a merged model."""
    tags = list(TAGS)
    if library_name == "peft" and facts.base_model:
        tags.append(f"base_model:adapter:{facts.base_model}")  # the tag PEFT's own cards carry
    results = []
    for key, name in MAP_KEYS:
        value = _finite((facts.eval_after or {}).get(key))
        if value is not None:
            results.append(EvalResult(task_type="image-segmentation", task_name="Promptable concept segmentation",
                                      dataset_type="custom", dataset_name=facts.dataset_name, dataset_split="validation",
                                      metric_type="mAP", metric_name=f"{name} (COCO)", metric_value=round(value, 4)))
    return ModelCardData(library_name=library_name, base_model=facts.base_model, pipeline_tag=PIPELINE_TAG, tags=tags,
                         model_name=facts.title if results else None, eval_results=results or None, **SAM_LICENSE)


def _usage(facts: ModelCardFacts, library_name: str) -> list[str]:
    base = facts.base_model or "<the SAM3 folder it was trained on>"
    if library_name == "transformers":
        return ["```python", "from transformers import Sam3Model", "",
                'model = Sam3Model.from_pretrained("<this repo or folder>")', "```"]
    return ["```python", "from peft import PeftModel", "from transformers import Sam3Model", "",
            f'model = PeftModel.from_pretrained(Sam3Model.from_pretrained("{base}"), "<this repo or folder>")', "```",
            "", "or `sam3-lora predict --image photo.png --prompt <concept> --adapter <this folder>`."]


def _evaluation(facts: ModelCardFacts) -> list[str]:
    before, after = facts.eval_before or {}, facts.eval_after or {}
    lines = ["## Evaluation (COCO mAP on the validation split)", ""]
    if not before and not after:
        return lines + ["Not measured: the run had no validation data.", ""]
    lines += ["| | " + " | ".join(name for _, name in MAP_KEYS) + " |", "|---" * (len(MAP_KEYS) + 1) + "|"]
    for label, evaluation in (("before (base model)", before), ("after", after)):
        lines.append(f"| {label} | " + " | ".join(_shown(evaluation.get(key)) for key, _ in MAP_KEYS) + " |")
    concepts = sorted(set(before.get("per_concept") or {}) | set(after.get("per_concept") or {}))
    if concepts:
        lines += ["", "Per concept (AP before → after):", "", "| concept | segm AP | bbox AP |", "|---|---|---|"]
        for name in concepts:
            was, now = (before.get("per_concept") or {}).get(name, {}), (after.get("per_concept") or {}).get(name, {})
            lines.append(f"| {_cell(name)} | {_shown(was.get('segm_AP'))} → {_shown(now.get('segm_AP'))} | "
                         f"{_shown(was.get('bbox_AP'))} → {_shown(now.get('bbox_AP'))} |")
    return lines + [""]


def _review(facts: ModelCardFacts) -> list[str]:
    """Proposals accepted unchanged / edited / rejected per proposing model and concept; nothing without numbers.

    accepted share = accepted / (accepted + edited + rejected)."""
    if not facts.review_outcomes:
        return []
    lines = ["## Proposals reviewed while labelling", "",
             "How the people labelling this data judged the proposals of the models before this adapter "
             "(a higher accepted share means less brush work).", "",
             "| model | concept | accepted unchanged | edited | rejected | accepted share |", "|---|---|---|---|---|---|"]
    for model, per_concept in facts.review_outcomes.items():
        for concept, counts in sorted(per_concept.items()):
            accepted, edited, rejected = (int(counts.get(key, 0)) for key in ("accepted", "edited", "rejected"))
            judged = accepted + edited + rejected
            share = f"{accepted / judged:.0%}" if judged else "-"
            lines.append(f"| {_cell(model)} | {_cell(concept)} | {accepted} | {edited} | {rejected} | {share} |")
    return lines + [""]


def _data(facts: ModelCardFacts) -> list[str]:
    lines = ["## Data", ""]
    splits = [(name, facts.dataset.get(name)) for name in ("train", "val") if facts.dataset.get(name)]
    if not splits:
        return lines + ["No data summary was recorded.", ""]
    lines += ["| split | images | without objects | instances | positive queries | negative queries |",
              "|---|---|---|---|---|---|"]
    for name, summary in splits:
        lines.append(f"| {name} | {summary.get('images', '-')} | {summary.get('images_without_instances', '-')} | "
                     f"{summary.get('instances', '-')} | {summary.get('positive_queries', '-')} | "
                     f"{summary.get('negative_queries', '-')} |")
    lines += ["", "| concept | " + " | ".join(f"{name} instances" for name, _ in splits) + " |",
              "|---" * (len(splits) + 1) + "|"]
    concepts = sorted({concept for _, summary in splits for concept in summary.get("instances_per_concept") or {}})
    for concept in concepts:
        counts = [str((summary.get("instances_per_concept") or {}).get(concept, 0)) for _, summary in splits]
        lines.append(f"| {_cell(concept)} | " + " | ".join(counts) + " |")
    warnings = [f"- warning: {_cell(warning)}" for warning in facts.dataset.get("warnings") or []]
    return lines + ([""] + warnings if warnings else []) + [""]


def model_card_text(facts: ModelCardFacts, library_name: str = "peft") -> str:
    """The whole README.md: metadata between '---' lines, then the body."""
    metadata = card_metadata(facts, library_name).to_yaml()
    what = ("SAM3 with a LoRA adapter merged into its weights" if library_name == "transformers"
            else "A LoRA adapter (PEFT) for SAM3")
    base = f"`{facts.base_model}`" if facts.base_model else "a SAM3 that is not on the Hub (e.g. the tiny random test model)"
    lines = [f"# {facts.title}", "", f"{what}, fine-tuned for promptable concept segmentation: give it an image and "
             "a noun phrase, it returns every instance of that phrase (mask, box, score).", "",
             f"Status: {facts.status}. Base model: {base}. Licence: the SAM License of the base model.", "",
             "## Use it", "", *_usage(facts, library_name), "", *_evaluation(facts), *_review(facts), *_data(facts),
             "## Loss curve", "", f"![loss curve]({CURVE_FILE})", "",
             "## Training config", "", "```yaml", yaml.safe_dump(facts.config, sort_keys=False).rstrip(), "```", ""]
    return f"---\n{metadata}\n---\n\n" + "\n".join(lines)


def write_text_atomically(path: Path, text: str) -> None:
    """Temp file in the same folder, fsync, os.replace: a reader sees the old or the new file."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    fsync_path(temp)
    os.replace(temp, path)


def set_adapter_base_model(folder: Path, base_model: str) -> None:
    """Point adapter_config.json's base_model_name_or_path at `base_model` (a Hub id)."""
    config_path = Path(folder) / CONFIG_FILE
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("base_model_name_or_path") != base_model:
        config["base_model_name_or_path"] = base_model
        write_text_atomically(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_model_card(folder: Path, facts: ModelCardFacts, library_name: str = "peft") -> Path:
    """Write folder/README.md (replacing PEFT's stub) and folder/loss_curve.png; returns the README path.

    With a known base model and an adapter_config.json in the folder, that file names the base by its Hub id too.
    """
    folder = Path(folder)
    draw_loss_curve(facts.history, folder / CURVE_FILE)
    card = folder / CARD_FILE
    write_text_atomically(card, model_card_text(facts, library_name))
    if facts.base_model and (folder / CONFIG_FILE).is_file():
        set_adapter_base_model(folder, facts.base_model)
    return card


def merged_card_text(adapter_card: str | None, base_model: str | None, title: str) -> str:
    """The card of a merged model: the adapter's card (when it has one of ours) with library_name
    transformers, the adapter-only tags dropped and a note on top; else a short card of its own."""
    try:
        card = ModelCard(adapter_card) if adapter_card else None
    except ValueError:  # not a card with metadata (e.g. PEFT's stub without a header)
        card = None
    if card is None or card.data.library_name != "peft":
        facts = ModelCardFacts(title=title, base_model=base_model, config={}, dataset_name="", status="merged export")
        return model_card_text(facts, library_name="transformers")
    data = card.data
    data.library_name = "transformers"
    data.base_model = base_model or data.base_model
    data.tags = [tag for tag in (data.tags or []) if not tag.startswith("base_model:adapter:")] + ["merged-lora"]
    note = ("> This folder is the adapter described below merged into its base model (W + (alpha/r) B A): a plain "
            "`Sam3Model` that `Sam3Model.from_pretrained` loads without PEFT.\n")
    body = card.text.replace("A LoRA adapter (PEFT) for SAM3", "SAM3 with a LoRA adapter merged into its weights", 1)
    usage = "## Use it\n\n" + "\n".join(_usage(ModelCardFacts(title, base_model, {}, "", ""), "transformers")) + "\n\n"
    body = re.sub(r"## Use it\n.*?(?=^## )", lambda _: usage, body, count=1, flags=re.S | re.M)
    return f"---\n{data.to_yaml()}\n---\n\n{note}\n{body.lstrip()}"
