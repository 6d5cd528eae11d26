"""Which SAM3 linear layers get LoRA, and how it is injected and counted.

A *component* is a named part of SAM3 with one anchored regex over full module
names (`re.fullmatch`, as peft applies a string `target_modules`). Layer indices
are `\\d+`, so the same regex hits the 2 ViT layers of the tiny model and the 32
of the real one. Each regex names only layers a text-prompt forward uses, so
every LoRA tensor receives a gradient. Never targeted (unused by text prompts,
see ../shared/docs/sam3.md): `geometry_encoder.*` (box prompts only) and
`text_encoder.text_projection`. A bare suffix list such as ["q_proj", "v_proj"]
would also hit the geometry encoder: its LoRA tensors would never train and
DDP would need `find_unused_parameters`.

LoRA on a frozen linear W [out,in]:  y = W x + (alpha / rank) * B (A x),
A [rank,in] (random init), B [out,rank] (zero init, so training starts at the
base model).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

_ATTENTION = r"(?:q|k|v|o)_proj"
_MLP = r"mlp\.fc[12]"

# Component -> regex over module names of Sam3Model (checked on transformers 5.23).
COMPONENT_PATTERNS: dict[str, str] = {
    # ViT backbone: windowed / global RoPE attention and MLP of every layer.
    "vision": rf"vision_encoder\.backbone\.layers\.\d+\.(?:attention\.{_ATTENTION}|{_MLP})",
    # DETR encoder: image self-attention, image->text cross-attention, MLP.
    "detr_encoder": rf"detr_encoder\.layers\.\d+\.(?:(?:self_attn|cross_attn)\.{_ATTENTION}|{_MLP})",
    # DETR decoder: query self-attention, query->text and query->image cross-attention, MLP.
    "detr_decoder": (
        rf"detr_decoder\.layers\.\d+\.(?:(?:self_attn|text_cross_attn|vision_cross_attn)\.{_ATTENTION}|{_MLP})"
    ),
    # Mask decoder: pixel->prompt cross-attention and the 3-layer query->mask-embedding MLP.
    "mask_decoder": rf"mask_decoder\.(?:prompt_cross_attn\.{_ATTENTION}|mask_embedder\.layers\.\d+)",
    # Scoring heads: box refinement, presence ("is the phrase in the image") and the
    # query-text dot-product scorer. Small, and they decide what a proposal is worth.
    "heads": r"detr_decoder\.(?:box_head|presence_head)\.layer\d+|dot_product_scoring\.(?:text_mlp\.layer\d+|text_proj|query_proj)",
    # CLIP text encoder layers (not its unused text_projection). Off in every preset:
    # 354M parameters for the real model, and the phrases of one project are few.
    "text": rf"text_encoder\.text_model\.encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|{_MLP})",
}
COMPONENTS: tuple[str, ...] = tuple(COMPONENT_PATTERNS)

PRESETS: dict[str, tuple[str, ...]] = {
    "decoder": ("detr_decoder", "mask_decoder", "heads"),
    "balanced": ("detr_encoder", "detr_decoder", "mask_decoder", "heads"),
    "full": ("vision", "detr_encoder", "detr_decoder", "mask_decoder", "heads"),
}

# peft prefixes module names of the wrapped model with this.
_PEFT_PREFIX = "base_model.model."


class LoraTargetError(ValueError):
    """A component or preset name is unknown, or a requested component got no LoRA module."""


def resolve_components(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Preset name, component name, or a list of either -> component names in COMPONENTS order.

    "balanced" -> ("detr_encoder", "detr_decoder", "mask_decoder");
    ["decoder", "text"] -> ("detr_decoder", "mask_decoder", "text").
    """
    names = [spec] if isinstance(spec, str) else list(spec)
    if not names:
        raise LoraTargetError(f"no LoRA components given; name a preset {sorted(PRESETS)} or components {list(COMPONENTS)}")
    chosen: set[str] = set()
    for name in names:
        if name in PRESETS:
            chosen.update(PRESETS[name])
        elif name in COMPONENT_PATTERNS:
            chosen.add(name)
        else:
            raise LoraTargetError(
                f"unknown LoRA preset or component {name!r}; valid presets: {sorted(PRESETS)}, "
                f"valid components: {list(COMPONENTS)}"
            )
    return tuple(name for name in COMPONENTS if name in chosen)


@dataclass
class LoraSettings:
    """Where LoRA goes and how large it is. Read only by `build_lora_config`."""

    components: str | list[str] | tuple[str, ...] = field(
        default="balanced",
        metadata={"help": "A preset (decoder, balanced, full), a component (vision, detr_encoder, "
                          "detr_decoder, mask_decoder, text), or a list of them."},
    )
    rank: int = field(default=16, metadata={"help": "LoRA rank r: A is [r,in], B is [out,r]. Integer >= 1."})
    alpha: float = field(default=32.0, metadata={"help": "LoRA alpha; the update is scaled by alpha / rank. > 0."})
    dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the LoRA input during training, in [0, 1). 0 disables it."}
    )

    def __post_init__(self) -> None:
        resolve_components(self.components)  # raises with the valid names
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1 (e.g. 8 or 16), got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be a number > 0 (commonly 2 x rank), got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1) (0 disables it), got {self.dropout!r}")

    @property
    def resolved_components(self) -> tuple[str, ...]:
        return resolve_components(self.components)


def target_modules_regex(components: tuple[str, ...] | list[str]) -> str:
    """One anchored regex `(?:p1|p2|...)` over full module names, for `LoraConfig.target_modules`."""
    return "(?:" + "|".join(f"(?:{COMPONENT_PATTERNS[name]})" for name in components) + ")"


def build_lora_config(settings: LoraSettings) -> LoraConfig:
    """LoraSettings -> peft LoraConfig with target_modules as ONE regex string (peft fullmatches it)."""
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_modules_regex(settings.resolved_components),
        bias="none",
    )


def component_of(module_name: str) -> str | None:
    """Component whose regex fully matches `module_name` (peft's prefix stripped), or None."""
    if module_name.startswith(_PEFT_PREFIX):
        module_name = module_name[len(_PEFT_PREFIX):]
    for name, pattern in COMPONENT_PATTERNS.items():
        if re.fullmatch(pattern, module_name):
            return name
    return None


def lora_modules_by_component(model: torch.nn.Module) -> dict[str, list[str]]:
    """Component -> names of the modules of `model` that carry LoRA ('other' for any outside every component)."""
    found: dict[str, list[str]] = {name: [] for name in COMPONENTS}
    for module_name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            found.setdefault(component_of(module_name) or "other", []).append(module_name)
    return found


def check_components_covered(model: torch.nn.Module, components: tuple[str, ...] | list[str]) -> None:
    """Raise LoraTargetError naming every requested component that got no LoRA module."""
    found = lora_modules_by_component(model)
    empty = [name for name in components if not found.get(name)]
    if empty:
        raise LoraTargetError(
            f"LoRA components {empty} matched no module of this model (regexes: "
            f"{ {name: COMPONENT_PATTERNS[name] for name in empty} }); the architecture differs from "
            "Sam3Model of transformers>=5.4, or drop these components"
        )


def apply_lora(model: torch.nn.Module, settings: LoraSettings) -> PeftModel:
    """Wrap `model` in a PeftModel: base parameters frozen, only lora_A / lora_B trainable.

    Raises LoraTargetError when a requested component got no LoRA module (the public
    SAM3 LoRA scripts claim more modules than they inject; we check).
    """
    peft_model = get_peft_model(model, build_lora_config(settings))
    check_components_covered(peft_model, settings.resolved_components)
    return peft_model


def trainable_parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable parameter count per component, plus totals.

    Keys: every name in COMPONENTS (0 where no LoRA), 'other' (trainable parameters
    outside every component; 0 after `apply_lora`), 'trainable' (sum of all
    trainable) and 'base' (parameters that are not LoRA tensors, frozen or not).
    """
    counts = {name: 0 for name in COMPONENTS} | {"other": 0, "trainable": 0, "base": 0}
    for parameter_name, parameter in model.named_parameters():
        is_lora = ".lora_" in parameter_name
        if not is_lora:
            counts["base"] += parameter.numel()
        if not parameter.requires_grad:
            continue
        counts["trainable"] += parameter.numel()
        component = component_of(parameter_name.split(".lora_")[0]) if is_lora else None
        counts[component or "other"] += parameter.numel()
    return counts
