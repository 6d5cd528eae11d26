"""TrainConfig: every knob of a fine-tune, validated once, frozen into the job row as JSON.

Sections (YAML keys): model, lora, data (with data.augment), optim, schedule, loss,
plus run-level keys (precision, device, gpus, seed, eval_every, checkpoint_every,
log_every, output_dir, resume). Every key a YAML may carry is read or rejected:
an unknown key at any depth is an error naming its dotted path and the closest
valid key; a wrong type names the key, the value and the expected type. Relative
paths are relative to the working directory. `to_dict()` is plain JSON and
`from_dict(to_dict(c)) == c`.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from sam3_lora.schedule import SCHEDULES

LORA_PRESETS = ("decoder", "balanced", "full")
LORA_COMPONENTS = ("vision", "detr_encoder", "detr_decoder", "mask_decoder", "heads", "text")
MASK_LOSS_MODES = ("points", "full")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
PATCH_SIZE = 14  # SAM3's ViT patch; the input side must be a whole number of patches.
DEFAULT_VAL_FRACTION = 0.1
# Mask2Former / PointRend sample 112*112 points per mask for the mask and dice losses.
DEFAULT_NUM_POINTS = 112 * 112


class ConfigError(ValueError):
    """A config key is unknown, missing, of the wrong type or out of range; the message says which and what to do."""


def _key(help_text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING):
    """A dataclass field carrying its help string in metadata['help']."""
    return field(default=default, default_factory=factory, metadata={"help": help_text})


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


@dataclass(kw_only=True)
class ModelSection:
    source: str = _key("SAM3 weights: a hub id (facebook/sam3 is gated: log in with `hf auth login`) or a "
                       "local folder written by save_pretrained that also holds the tokenizer files.", "facebook/sam3")

    def __post_init__(self):
        _check_types(self, "model")
        _require(bool(self.source.strip()), "model.source", "is empty; give a hub id or a folder")


@dataclass(kw_only=True)
class LoraSection:
    preset: str | tuple[str, ...] = _key(
        f"Which parts get LoRA: a preset ({' | '.join(LORA_PRESETS)}) or a list of components among "
        f"{', '.join(LORA_COMPONENTS)}.", "decoder")
    rank: int = _key("LoRA rank r (>= 1).", 16)
    alpha: float = _key("LoRA alpha; the update is scaled by alpha / rank (> 0).", 32.0)
    dropout: float = _key("Dropout on the LoRA input, in [0, 1).", 0.05)

    def __post_init__(self):
        _check_types(self, "lora")
        if isinstance(self.preset, str):
            _require(self.preset in LORA_PRESETS, "lora.preset",
                     f"unknown preset {self.preset!r}; use one of {', '.join(LORA_PRESETS)} or a list of components")
        else:
            _require(len(self.preset) > 0, "lora.preset", "the component list is empty; name at least one")
            for name in self.preset:
                _require(name in LORA_COMPONENTS, "lora.preset",
                         f"unknown component {name!r}; use {', '.join(LORA_COMPONENTS)}")
            _require(len(set(self.preset)) == len(self.preset), "lora.preset", "lists a component twice")
        _require(self.rank >= 1, "lora.rank", f"must be >= 1, got {self.rank}")
        _require(self.alpha > 0, "lora.alpha", f"must be > 0, got {self.alpha}")
        _require(0 <= self.dropout < 1, "lora.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(kw_only=True)
class AugmentSection:
    hflip_prob: float = _key("Probability of a horizontal flip per training image, in [0, 1].", 0.5)
    scale_jitter: tuple[float, float] = _key(
        "[min, max] random rescale of the image before padding back to image_size; [1, 1] turns it off.", (0.75, 1.25))

    def __post_init__(self):
        _check_types(self, "data.augment")
        _require(0 <= self.hflip_prob <= 1, "data.augment.hflip_prob", f"must be in [0, 1], got {self.hflip_prob}")
        low, high = self.scale_jitter
        _require(0 < low <= high, "data.augment.scale_jitter",
                 f"needs 0 < min <= max, got [{low}, {high}]")


@dataclass(kw_only=True)
class DataSection:
    train_annotations: str = _key("COCO json of the training set.")
    train_images: str = _key("Folder holding the training images named in train_annotations.")
    val_annotations: str | None = _key("COCO json of a separate validation set; leave out to split off "
                                       "val_fraction of the training images instead.", None)
    val_images: str | None = _key("Folder of the validation images (with val_annotations).", None)
    val_fraction: float | None = _key(
        f"Fraction of training images held out for validation when there is no val_annotations, in [0, 1); "
        f"0 = no validation. Defaults to {DEFAULT_VAL_FRACTION}.", None)
    image_size: int | None = _key(f"Input side in pixels, a multiple of {PATCH_SIZE}; leave out for the "
                                  "model's own size (1008 for SAM3).", None)
    batch_size: int = _key("Images per forward pass per GPU (>= 1).", 2)
    negatives_per_image: int = _key("Phrases absent from an image asked per image as negatives (>= 0); "
                                    "they teach the presence head to say 'none here'.", 1)
    augment: AugmentSection = _key("Training-time augmentation.", factory=AugmentSection)

    def __post_init__(self):
        _check_types(self, "data")
        _require(bool(self.train_annotations.strip()), "data.train_annotations", "is empty; give the COCO json")
        _require(bool(self.train_images.strip()), "data.train_images", "is empty; give the image folder")
        if self.val_annotations is None:
            _require(self.val_images is None, "data.val_images",
                     "is set without data.val_annotations; set both or neither")
            if self.val_fraction is None:
                self.val_fraction = DEFAULT_VAL_FRACTION
            _require(0 <= self.val_fraction < 1, "data.val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        else:
            _require(self.val_images is not None, "data.val_images",
                     "is missing; data.val_annotations needs its image folder")
            _require(self.val_fraction is None, "data.val_fraction",
                     "set either data.val_annotations (a separate validation set) or data.val_fraction "
                     "(split off the training set), not both")
        if self.image_size is not None:
            _require(self.image_size > 0 and self.image_size % PATCH_SIZE == 0, "data.image_size",
                     f"must be a positive multiple of {PATCH_SIZE} (SAM3's patch size), got {self.image_size}; "
                     f"e.g. {max(PATCH_SIZE, round(self.image_size / PATCH_SIZE) * PATCH_SIZE)}")
        _require(self.batch_size >= 1, "data.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.negatives_per_image >= 0, "data.negatives_per_image",
                 f"must be >= 0, got {self.negatives_per_image}")

    @property
    def has_validation(self) -> bool:
        return self.val_annotations is not None or self.val_fraction > 0


@dataclass(kw_only=True)
class OptimSection:
    lr: float = _key("AdamW learning rate (> 0), reached at the end of warmup.", 1e-4)
    weight_decay: float = _key("AdamW decoupled weight decay (>= 0).", 0.01)
    betas: tuple[float, float] = _key("AdamW [beta1, beta2], each in [0, 1).", (0.9, 0.999))
    # DETR and SAM3 clip at 0.1; LoRA gradients are small, so it rarely bites but stops spikes.
    grad_clip: float = _key("Max global grad norm before each optimiser step; 0 = no clipping.", 0.1)
    grad_accumulation: int = _key("Micro-batches summed per optimiser step (>= 1).", 1)

    def __post_init__(self):
        _check_types(self, "optim")
        _require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _require(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        for beta in self.betas:
            _require(0 <= beta < 1, "optim.betas", f"each beta must be in [0, 1), got {list(self.betas)}")
        _require(self.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")
        _require(self.grad_accumulation >= 1, "optim.grad_accumulation",
                 f"must be >= 1 (1 = no accumulation), got {self.grad_accumulation}")


@dataclass(kw_only=True)
class ScheduleSection:
    decay: str = _key(f"LR after warmup: {' | '.join(SCHEDULES)} (cosine and linear end at 0).", "cosine")
    warmup_steps: int = _key("Optimiser steps of linear warmup from 0 to optim.lr (>= 0).", 0)
    epochs: int | None = _key("Passes over the training set; set this or max_steps, not both. Total "
                              "steps = epochs * ceil(batches per epoch / grad_accumulation).", None)
    max_steps: int | None = _key("Optimiser steps to take; set this or epochs, not both. The data "
                                 "loader cycles through epochs until the count is reached.", None)

    def __post_init__(self):
        _check_types(self, "schedule")
        _require(self.decay in SCHEDULES, "schedule.decay",
                 f"unknown schedule {self.decay!r}; use one of {', '.join(SCHEDULES)}")
        _require(self.warmup_steps >= 0, "schedule.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require((self.epochs is None) != (self.max_steps is None), "schedule.epochs/schedule.max_steps",
                 "set exactly one: epochs (passes over the data) or max_steps (optimiser steps)")
        if self.epochs is not None:
            _require(self.epochs >= 1, "schedule.epochs", f"must be >= 1, got {self.epochs}")
        if self.max_steps is not None:
            _require(self.max_steps >= 1, "schedule.max_steps", f"must be >= 1, got {self.max_steps}")
            _require(self.warmup_steps == 0 or self.warmup_steps < self.max_steps, "schedule.warmup_steps",
                     f"({self.warmup_steps}) must be below schedule.max_steps ({self.max_steps})")


@dataclass(kw_only=True)
class LossSection:
    # Weights of SAM3's own training recipe (DETR-style set criterion).
    bbox: float = _key("Weight of the L1 box loss.", 5.0)
    giou: float = _key("Weight of the generalised-IoU box loss.", 2.0)
    ce: float = _key("Weight of the per-query classification (focal) loss.", 20.0)
    presence: float = _key("Weight of the presence-token loss (is the phrase in the image at all).", 20.0)
    mask: float = _key("Weight of the sigmoid BCE mask loss.", 200.0)
    dice: float = _key("Weight of the dice mask loss.", 10.0)
    mask_mode: str = _key("Mask losses on sampled points (points, cheap) or every pixel (full).", "points")
    num_points: int | None = _key(f"Points sampled per mask in points mode (default {DEFAULT_NUM_POINTS}); "
                                  "not allowed in full mode.", None)

    def __post_init__(self):
        _check_types(self, "loss")
        for name in ("bbox", "giou", "ce", "presence", "mask", "dice"):
            _require(getattr(self, name) >= 0, f"loss.{name}", f"must be >= 0, got {getattr(self, name)}")
        _require(self.mask_mode in MASK_LOSS_MODES, "loss.mask_mode",
                 f"unknown mode {self.mask_mode!r}; use one of {', '.join(MASK_LOSS_MODES)}")
        if self.mask_mode == "points":
            if self.num_points is None:
                self.num_points = DEFAULT_NUM_POINTS
            _require(self.num_points >= 1, "loss.num_points", f"must be >= 1, got {self.num_points}")
        else:
            _require(self.num_points is None, "loss.num_points",
                     "applies to mask_mode 'points' only; remove it or set mask_mode: points")


@dataclass(kw_only=True)
class TrainConfig:
    model: ModelSection = _key("Which SAM3 to fine-tune.", factory=ModelSection)
    lora: LoraSection = _key("Where the LoRA adapters go and their size.", factory=LoraSection)
    data: DataSection = _key("Training / validation data (COCO) and augmentation.")
    optim: OptimSection = _key("AdamW settings, clipping, accumulation.", factory=OptimSection)
    schedule: ScheduleSection = _key("Run length and LR schedule.", factory=ScheduleSection)
    loss: LossSection = _key("Loss weights and mask-loss mode.", factory=LossSection)
    precision: str = _key("auto (bf16 on a CUDA GPU that supports it, else fp32) | bf16 | fp16 | fp32.", "auto")
    device: str = _key("auto (cuda if available) | cpu | cuda.", "auto")
    gpus: int = _key("Processes for one job, one per GPU (>= 1); above 1 the job runs under torchrun with DDP "
                     "(NCCL on CUDA; with device cpu, gloo processes on the CPU, for tests).", 1)
    seed: int = _key("Seed of every RNG (torch, numpy, python) and of the train/val split.", 0)
    eval_every: int = _key("Optimiser steps between validation passes; 0 = once, at the end.", 500)
    checkpoint_every: int = _key("Optimiser steps between checkpoints; 0 = only at the end.", 500)
    log_every: int = _key("Optimiser steps between training metric rows (>= 1).", 10)
    output_dir: str = _key("Folder for checkpoints, the adapter and the effective config.", "runs/sam3-lora")
    resume: str | None = _key("Checkpoint to resume from: a file path, 'auto' (latest in output_dir, or a "
                              "fresh start when there is none) or null.", None)

    def __post_init__(self):
        _check_types(self, "")
        _require(self.precision in PRECISIONS, "precision",
                 f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        _require(self.device in DEVICES, "device", f"unknown device {self.device!r}; use one of {', '.join(DEVICES)}")
        _require(self.gpus >= 1, "gpus", f"must be >= 1, got {self.gpus}")
        for name in ("eval_every", "checkpoint_every"):
            _require(getattr(self, name) >= 0, name, f"must be >= 0 (0 = at the end only), got {getattr(self, name)}")
        _require(self.eval_every == 0 or self.data.has_validation, "eval_every",
                 "is set but there is no validation data (data.val_fraction is 0 and no data.val_annotations); "
                 "set eval_every: 0 or give validation data")
        _require(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        _require(bool(self.output_dir.strip()), "output_dir", "is empty; give a folder")
        if self.resume is not None and self.resume.strip().lower() in ("", "none", "null"):
            self.resume = None  # YAML `resume: none` is the string "none", meant as "no resume"

    @classmethod
    def from_dict(cls, values: Mapping) -> TrainConfig:
        """Build and validate from nested mappings (parsed YAML / the job row's JSON)."""
        problems = _unknown_keys(cls, values, "")
        if problems:
            raise ConfigError("\n".join(problems))
        return _build(cls, values, "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a YAML file; any problem is a ConfigError that starts with the file's path."""
        values = _read_yaml_mapping(Path(path))
        try:
            return cls.from_dict(values)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None

    def to_dict(self) -> dict:
        """Nested plain dict (tuples become lists): JSON-serialisable, and from_dict gives back an equal config."""
        return _to_plain(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


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
        try:  # torch raises here on builds without low-precision CPU kernels
            probe = torch.ones(2, 2, dtype=dtype)
            (probe @ probe).sum().item()
        except RuntimeError as error:
            raise ConfigError(f"precision: this CPU build of torch cannot compute in {precision} ({error}); "
                              "use fp32 or auto") from error
    return dtype


def config_help(cls=TrainConfig, prefix: str = "") -> dict[str, str]:
    """Dotted key -> help string, for every key of the config (CLI --help, the UI's tooltips)."""
    helps = {}
    for item in dataclasses.fields(cls):
        path = f"{prefix}{item.name}"
        helps[path] = item.metadata["help"]
        if dataclasses.is_dataclass(_hints(cls)[item.name]):
            helps.update(config_help(_hints(cls)[item.name], f"{path}."))
    return helps


# ---- generic machinery: types, unknown keys, building, plain output ----

def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _check_types(section, prefix: str) -> None:
    """Check every field against its annotation; ints become floats, lists become tuples."""
    for name, hint in _hints(type(section)).items():
        key = f"{prefix}.{name}" if prefix else name
        setattr(section, name, _coerce(getattr(section, name), hint, key))


def _coerce(value, hint, key: str):
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        raise ConfigError(f"{key}: expected a {hint.__name__} section, got {type(value).__name__} {value!r}")
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                try:
                    return _coerce(value, option, key)
                except ConfigError:
                    pass
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
    elif hint in (int, str) and isinstance(value, hint) and not isinstance(value, bool):
        return value
    elif typing.get_origin(hint) is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        item_hints = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(item_hints) == len(value):
            return tuple(_coerce(item, item_hint, key) for item, item_hint in zip(value, item_hints))
    raise ConfigError(f"{key}: expected {_describe(hint)}, got {type(value).__name__} {value!r}")


def _describe(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if args[-1] is Ellipsis:
            return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
        return f"a list of {len(args)} {_describe(args[0]).split(' ', 1)[1]}s"
    names = {int: "an integer", float: "a finite number", str: "a string", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _unknown_keys(cls, values, prefix: str) -> list[str]:
    """One message per unknown key at any depth, each with the closest valid key."""
    if not isinstance(values, Mapping):
        return []  # _build reports the wrong type with the key's name
    hints = _hints(cls)
    problems = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in hints:
            problems.append(_unknown_key_message(path, cls, prefix))
        elif dataclasses.is_dataclass(hints[key]):
            problems.extend(_unknown_keys(hints[key], value, f"{path}."))
    return problems


def _unknown_key_message(path: str, section_cls, prefix: str) -> str:
    leaf = path.rsplit(".", 1)[-1]
    siblings = {f"{prefix}{name}" for name in _hints(section_cls)}
    best, best_score = None, 0.6  # difflib's usual cutoff
    for candidate in config_help():
        # Compare leaf names only: a shared "optim." prefix says nothing about "optim.warmup".
        score = difflib.SequenceMatcher(None, leaf, candidate.rsplit(".", 1)[-1]).ratio()
        score += 0.01 if candidate in siblings else 0.0  # on a tie, prefer the same section
        if score > best_score:
            best, best_score = candidate, score
    if best is not None:
        return f"unknown key '{path}' — did you mean '{best}'?"
    return f"unknown key '{path}'; valid keys here: {', '.join(sorted(siblings))}"


def _build(cls, values, prefix: str):
    section = prefix.rstrip(".") or "the config"
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section}: expected a mapping of keys, got {type(values).__name__} {values!r}")
    hints = _hints(cls)
    kwargs = {}
    for item in dataclasses.fields(cls):
        path = f"{prefix}{item.name}"
        if item.name in values:
            value = values[item.name]
            if dataclasses.is_dataclass(hints[item.name]):
                value = _build(hints[item.name], value, f"{path}.")
            kwargs[item.name] = value
        elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing key '{path}': {item.metadata['help']}")
    return cls(**kwargs)


def _to_plain(value):
    if dataclasses.is_dataclass(value):
        return {item.name: _to_plain(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_to_plain(item) for item in value]
    return value


# ---- YAML: YAML 1.2 floats, no silent duplicate keys ----

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (PyYAML's YAML 1.1 rules read it as the
    string "1e-4", a classic lr typo trap) and refuses duplicate keys (it keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # SafeLoader's own error names the unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}; each key may appear once", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read_yaml_mapping(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        values = yaml.load(path.read_text(), Loader=_StrictLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the file must hold a mapping of keys (model:, data:, ...), "
                          f"got {type(values).__name__}")
    return values
