"""TrainConfig: every knob of a fine-tune, validated once, frozen into the job row as JSON.

Sections (YAML keys): model, lora, data (with data.augment), optim, schedule, loss,
plus run-level keys (precision, device, gpus, seed, eval_every, checkpoint_every,
log_every, output_dir, resume). Every key a YAML may carry is read or rejected:
an unknown key at any depth is an error naming its dotted path and the closest
valid key; a wrong type names the key, the value and the expected type (the
engine that does this is sam3_lora.config_schema; this file holds the sections
and their rules). Relative paths are relative to the working directory.
`to_dict()` is plain JSON and `from_dict(to_dict(c)) == c`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from sam3_lora.config_schema import (ConfigError, build_section, check_types, key_field, read_yaml_mapping, require,
                                     section_help, to_plain, unknown_keys)
from sam3_lora.hub_ids import is_hub_id
from sam3_lora.losses import DEFAULT_NUM_POINTS, MASK_MODES as MASK_LOSS_MODES, LossWeights
from sam3_lora.schedule import SCHEDULES

LORA_PRESETS = ("decoder", "balanced", "full")
LORA_COMPONENTS = ("vision", "detr_encoder", "detr_decoder", "mask_decoder", "heads", "text")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
PATCH_SIZE = 14  # SAM3's ViT patch; the input side must be a whole number of patches.
DEFAULT_VAL_FRACTION = 0.1


@dataclass(kw_only=True)
class ModelSection:
    source: str = key_field("SAM3 weights: a hub id (facebook/sam3 is gated: log in with `hf auth login`) or a "
                            "local folder written by save_pretrained that also holds the tokenizer files.", "facebook/sam3")
    base_model: str | None = key_field("Hub id the weights of a local `source` folder came from (e.g. facebook/sam3): "
                                       "the model card and adapter_config.json name it, never the folder. Leave "
                                       "out when source is the hub id.", None)

    def __post_init__(self):
        check_types(self, "model")
        require(bool(self.source.strip()), "model.source", "is empty; give a hub id or a folder")
        if self.base_model is not None:
            require(is_hub_id(self.base_model), "model.base_model",
                    f"must be a Hub id such as facebook/sam3, not a path; got {self.base_model!r}")


@dataclass(kw_only=True)
class LoraSection:
    preset: str | tuple[str, ...] = key_field(
        f"Which parts get LoRA: a preset ({' | '.join(LORA_PRESETS)}) or a list of components among "
        f"{', '.join(LORA_COMPONENTS)}.", "decoder")
    rank: int = key_field("LoRA rank r (>= 1).", 16)
    alpha: float = key_field("LoRA alpha; the update is scaled by alpha / rank (> 0).", 32.0)
    dropout: float = key_field("Dropout on the LoRA input, in [0, 1).", 0.05)

    def __post_init__(self):
        check_types(self, "lora")
        if isinstance(self.preset, str):
            require(self.preset in LORA_PRESETS, "lora.preset",
                    f"unknown preset {self.preset!r}; use one of {', '.join(LORA_PRESETS)} or a list of components")
        else:
            require(len(self.preset) > 0, "lora.preset", "the component list is empty; name at least one")
            for name in self.preset:
                require(name in LORA_COMPONENTS, "lora.preset",
                        f"unknown component {name!r}; use {', '.join(LORA_COMPONENTS)}")
            require(len(set(self.preset)) == len(self.preset), "lora.preset", "lists a component twice")
        require(self.rank >= 1, "lora.rank", f"must be >= 1, got {self.rank}")
        require(self.alpha > 0, "lora.alpha", f"must be > 0, got {self.alpha}")
        require(0 <= self.dropout < 1, "lora.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(kw_only=True)
class AugmentSection:
    hflip_prob: float = key_field("Probability of a horizontal flip per training image, in [0, 1].", 0.5)
    scale_jitter: tuple[float, float] = key_field(
        "[min, max] random rescale of the image before padding back to image_size; [1, 1] turns it off.", (0.75, 1.25))

    def __post_init__(self):
        check_types(self, "data.augment")
        require(0 <= self.hflip_prob <= 1, "data.augment.hflip_prob", f"must be in [0, 1], got {self.hflip_prob}")
        low, high = self.scale_jitter
        require(0 < low <= high, "data.augment.scale_jitter",
                f"needs 0 < min <= max, got [{low}, {high}]")


@dataclass(kw_only=True)
class DataSection:
    train_annotations: str = key_field("COCO json of the training set.")
    train_images: str = key_field("Folder holding the training images named in train_annotations.")
    val_annotations: str | None = key_field("COCO json of a separate validation set; leave out to split off "
                                            "val_fraction of the training images instead.", None)
    val_images: str | None = key_field("Folder of the validation images (with val_annotations).", None)
    val_fraction: float | None = key_field(
        f"Fraction of training images held out for validation when there is no val_annotations, in [0, 1); "
        f"0 = no validation. Defaults to {DEFAULT_VAL_FRACTION}.", None)
    image_size: int | None = key_field(f"Input side in pixels, a multiple of {PATCH_SIZE}; leave out for the "
                                       "model's own size (1008 for SAM3).", None)
    batch_size: int = key_field("Images per forward pass per GPU (>= 1).", 2)
    negatives_per_image: int = key_field("Phrases absent from an image asked per image as negatives (>= 0); "
                                         "they teach the presence head to say 'none here'.", 1)
    augment: AugmentSection = key_field("Training-time augmentation.", factory=AugmentSection)
    num_workers: int | None = key_field("DataLoader worker processes that decode and augment images while the "
                                        "model trains (>= 0; 0 = in the training process). Leave out for the "
                                        "CPUs of the machine per GPU process minus one, at most 8.", None)
    cache_backbone: bool = key_field("Keep each training image's backbone (ViT) features in memory after its first "
                                     "pass and reuse them every epoch. Only when the ViT gets no LoRA (decoder, "
                                     "balanced) and augmentation is off (hflip_prob 0, scale_jitter [1, 1]); "
                                     "about 0.25 GB per image at 1008 px.", False)

    def __post_init__(self):
        check_types(self, "data")
        require(self.num_workers is None or self.num_workers >= 0, "data.num_workers",
                f"must be >= 0 (0 = load in the training process), got {self.num_workers}")
        if self.cache_backbone:
            require(self.augment.hflip_prob == 0 and tuple(self.augment.scale_jitter) == (1.0, 1.0),
                    "data.cache_backbone", "needs augmentation off (data.augment.hflip_prob: 0, "
                    "data.augment.scale_jitter: [1, 1]): augmented images change every epoch")
        require(bool(self.train_annotations.strip()), "data.train_annotations", "is empty; give the COCO json")
        require(bool(self.train_images.strip()), "data.train_images", "is empty; give the image folder")
        if self.val_annotations is None:
            require(self.val_images is None, "data.val_images",
                    "is set without data.val_annotations; set both or neither")
            if self.val_fraction is None:
                self.val_fraction = DEFAULT_VAL_FRACTION
            require(0 <= self.val_fraction < 1, "data.val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        else:
            require(self.val_images is not None, "data.val_images",
                    "is missing; data.val_annotations needs its image folder")
            require(self.val_fraction is None, "data.val_fraction",
                    "set either data.val_annotations (a separate validation set) or data.val_fraction "
                    "(split off the training set), not both")
        if self.image_size is not None:
            require(self.image_size > 0 and self.image_size % PATCH_SIZE == 0, "data.image_size",
                    f"must be a positive multiple of {PATCH_SIZE} (SAM3's patch size), got {self.image_size}; "
                    f"e.g. {max(PATCH_SIZE, round(self.image_size / PATCH_SIZE) * PATCH_SIZE)}")
        require(self.batch_size >= 1, "data.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.negatives_per_image >= 0, "data.negatives_per_image",
                f"must be >= 0, got {self.negatives_per_image}")

    @property
    def has_validation(self) -> bool:
        return self.val_annotations is not None or self.val_fraction > 0


@dataclass(kw_only=True)
class OptimSection:
    lr: float = key_field("AdamW learning rate (> 0), reached at the end of warmup.", 1e-4)
    weight_decay: float = key_field("AdamW decoupled weight decay (>= 0).", 0.01)
    betas: tuple[float, float] = key_field("AdamW [beta1, beta2], each in [0, 1).", (0.9, 0.999))
    # DETR and SAM3 clip at 0.1; LoRA gradients are small, so it rarely bites but stops spikes.
    grad_clip: float = key_field("Max global grad norm before each optimiser step; 0 = no clipping.", 0.1)
    grad_accumulation: int = key_field("Micro-batches summed per optimiser step (>= 1).", 1)

    def __post_init__(self):
        check_types(self, "optim")
        require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        for beta in self.betas:
            require(0 <= beta < 1, "optim.betas", f"each beta must be in [0, 1), got {list(self.betas)}")
        require(self.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")
        require(self.grad_accumulation >= 1, "optim.grad_accumulation",
                f"must be >= 1 (1 = no accumulation), got {self.grad_accumulation}")


@dataclass(kw_only=True)
class ScheduleSection:
    decay: str = key_field(f"LR after warmup: {' | '.join(SCHEDULES)} (cosine and linear end at 0).", "cosine")
    warmup_steps: int = key_field("Optimiser steps of linear warmup from 0 to optim.lr (>= 0).", 0)
    epochs: int | None = key_field("Passes over the training set; set this or max_steps, not both. Total "
                                   "steps = epochs * ceil(batches per epoch / grad_accumulation).", None)
    max_steps: int | None = key_field("Optimiser steps to take; set this or epochs, not both. The data "
                                      "loader cycles through epochs until the count is reached.", None)

    def __post_init__(self):
        check_types(self, "schedule")
        require(self.decay in SCHEDULES, "schedule.decay",
                f"unknown schedule {self.decay!r}; use one of {', '.join(SCHEDULES)}")
        require(self.warmup_steps >= 0, "schedule.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require((self.epochs is None) != (self.max_steps is None), "schedule.epochs/schedule.max_steps",
                "set exactly one: epochs (passes over the data) or max_steps (optimiser steps)")
        if self.epochs is not None:
            require(self.epochs >= 1, "schedule.epochs", f"must be >= 1, got {self.epochs}")
        if self.max_steps is not None:
            require(self.max_steps >= 1, "schedule.max_steps", f"must be >= 1, got {self.max_steps}")
            require(self.warmup_steps == 0 or self.warmup_steps < self.max_steps, "schedule.warmup_steps",
                    f"({self.warmup_steps}) must be below schedule.max_steps ({self.max_steps})")


@dataclass(kw_only=True)
class LossSection(LossWeights):
    """The six term weights (LossWeights, SAM3's recipe) plus how the terms are computed."""

    mask_mode: str = key_field("Mask losses on sampled points (points, cheap) or every pixel (full).", "points")
    num_points: int | None = key_field(f"Points sampled per mask in points mode (default {DEFAULT_NUM_POINTS}); "
                                       "not allowed in full mode.", None)
    pos_weight: float = key_field("Weight of a matched query in the classification loss against an unmatched "
                                  "one (>= 0; SAM3's configs use 10, and name 5 as the other option).", 10.0)
    scale_by_find_batch_size: bool = key_field(
        "Multiply the total loss by sqrt(find-queries per GPU in an optimiser step); SAM3's default is false, "
        "its fine-tuning configs for small datasets set true.", False)

    def __post_init__(self):
        check_types(self, "loss")
        try:
            super().__post_init__()  # each weight finite and >= 0, not all 0
        except ValueError as error:
            raise ConfigError(str(error)) from None
        require(self.mask_mode in MASK_LOSS_MODES, "loss.mask_mode",
                f"unknown mode {self.mask_mode!r}; use one of {', '.join(MASK_LOSS_MODES)}")
        if self.mask_mode == "points":
            if self.num_points is None:
                self.num_points = DEFAULT_NUM_POINTS
            require(self.num_points >= 1, "loss.num_points", f"must be >= 1, got {self.num_points}")
        else:
            require(self.num_points is None, "loss.num_points",
                    "applies to mask_mode 'points' only; remove it or set mask_mode: points")
        require(self.pos_weight >= 0, "loss.pos_weight", f"must be >= 0, got {self.pos_weight}")


@dataclass(kw_only=True)
class TrainConfig:
    model: ModelSection = key_field("Which SAM3 to fine-tune.", factory=ModelSection)
    lora: LoraSection = key_field("Where the LoRA adapters go and their size.", factory=LoraSection)
    data: DataSection = key_field("Training / validation data (COCO) and augmentation.")
    optim: OptimSection = key_field("AdamW settings, clipping, accumulation.", factory=OptimSection)
    schedule: ScheduleSection = key_field("Run length and LR schedule.", factory=ScheduleSection)
    loss: LossSection = key_field("Loss weights, mask-loss mode and SAM3's loss options.", factory=LossSection)
    precision: str = key_field("auto (bf16 on a CUDA GPU that supports it, else fp32) | bf16 | fp16 | fp32; "
                               "bf16 and fp16 need a CUDA device.", "auto")
    gradient_checkpointing: bool | None = key_field(
        "Recompute the ViT layers, the DETR encoder/decoder layers and the mask decoder in the backward "
        "pass instead of storing their activations (one more forward of them; measured at 1008 px for the "
        "full preset: 1.1 GiB instead of ~17 GiB per image with 4 find-queries). Leave out for: on when "
        "the ViT gets LoRA (full preset, or the vision component), off otherwise.", None)
    device: str = key_field("auto (cuda if available) | cpu | cuda.", "auto")
    gpus: int = key_field("Processes for one job, one per GPU (>= 1); above 1 the job runs under torchrun with DDP "
                          "(NCCL on CUDA; with device cpu, gloo processes on the CPU, for tests).", 1)
    seed: int = key_field("Seed of every RNG (torch, numpy, python) and of the train/val split.", 0)
    eval_every: int = key_field("Optimiser steps between validation passes; 0 = once, at the end.", 500)
    checkpoint_every: int = key_field("Optimiser steps between checkpoints; 0 = only at the end.", 500)
    log_every: int = key_field("Optimiser steps between training metric rows (>= 1).", 10)
    output_dir: str = key_field("Folder for the checkpoints (each holds the effective config) and the adapter.", "runs/sam3-lora")
    resume: str | None = key_field("Checkpoint to resume from: a file path, 'auto' (latest in output_dir, or a "
                                   "fresh start when there is none) or null.", None)

    def __post_init__(self):
        check_types(self, "")
        require(self.precision in PRECISIONS, "precision",
                f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        require(self.device in DEVICES, "device", f"unknown device {self.device!r}; use one of {', '.join(DEVICES)}")
        require(self.gpus >= 1, "gpus", f"must be >= 1, got {self.gpus}")
        for name in ("eval_every", "checkpoint_every"):
            require(getattr(self, name) >= 0, name, f"must be >= 0 (0 = at the end only), got {getattr(self, name)}")
        require(self.eval_every == 0 or self.data.has_validation, "eval_every",
                "is set but there is no validation data (data.val_fraction is 0 and no data.val_annotations); "
                "set eval_every: 0 or give validation data")
        require(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        if self.data.cache_backbone:
            require(not self.lora_in_vision, "data.cache_backbone",
                    "needs a ViT without LoRA (decoder or balanced preset): the features of a ViT that "
                    "trains change every step")
        require(bool(self.output_dir.strip()), "output_dir", "is empty; give a folder")
        if self.resume is not None and self.resume.strip().lower() in ("", "none", "null"):
            self.resume = None  # YAML `resume: none` is the string "none", meant as "no resume"

    @property
    def lora_in_vision(self) -> bool:
        """True when the preset (or component list) puts LoRA in the ViT backbone."""
        return self.lora.preset == "full" if isinstance(self.lora.preset, str) else "vision" in self.lora.preset

    @property
    def checkpoint_vision(self) -> bool:
        """gradient_checkpointing resolved: its value, or (unset) whether the ViT gets LoRA."""
        return self.lora_in_vision if self.gradient_checkpointing is None else self.gradient_checkpointing

    @classmethod
    def from_dict(cls, values: Mapping) -> TrainConfig:
        """Build and validate from nested mappings (parsed YAML / the job row's JSON)."""
        problems = unknown_keys(cls, values)
        if problems:
            raise ConfigError("\n".join(problems))
        return build_section(cls, values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a YAML file; any problem is a ConfigError that starts with the file's path."""
        values = read_yaml_mapping(Path(path))
        try:
            return cls.from_dict(values)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None

    def to_dict(self) -> dict:
        """Nested plain dict (tuples become lists): JSON-serialisable, and from_dict gives back an equal config."""
        return to_plain(self)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but torch sees no CUDA GPU; use device: auto or cpu")
    if device not in DEVICES:
        raise ConfigError(f"device: unknown device {device!r}; use one of {', '.join(DEVICES)}")
    return torch.device(device)


def resolve_precision(precision: str, device: str | torch.device) -> torch.dtype:
    """Compute dtype for autocast: auto -> bf16 on CUDA when supported, else fp32."""
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    if precision == "auto":
        return torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if precision not in dtypes:
        raise ConfigError(f"precision: unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    dtype = dtypes[precision]
    if precision == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision: this GPU cannot compute in bf16; use fp16 or auto")
    if dtype != torch.float32 and not on_cuda:
        # Measured at SAM3's real size on a CPU (issue 15): autocast makes a training
        # step ~7x and a cached prompt ~100x slower than fp32, and saves no memory worth having.
        raise ConfigError(f"precision: {precision} needs a CUDA GPU; on a CPU ({device}) it runs several times "
                          "slower than fp32 (CPU autocast casts every matmul) and saves nothing; use fp32 or auto")
    return dtype


def config_help() -> dict[str, str]:
    """Dotted key -> help string, for every key of the config (CLI --help, the UI's tooltips)."""
    return section_help(TrainConfig)
