"""A fine-tune request of the studio: preset + advanced overrides -> validated job config -> job.

    values  = PRESETS[preset] (the configs/*.yaml recipes)  with  overrides {dotted key: value}
    config  = values + model.source = the SAM3 the studio runs (studio.models.status().source)
    check   = TrainConfig.from_dict(config + the keys the worker sets, as the worker will)
    job     = jobs.submit_job(project, config, dataset_snapshot(project), send)

Every TrainConfig key is either editable (FieldSpec.editable) or set by the worker
(WORKER_KEYS: data paths, output_dir, resume, model.source); an override of a worker key,
an unknown key or a bad value is a ConfigError whose message starts with the dotted key.
No gradio here: the Train tab's handlers call these functions.
"""
from __future__ import annotations

import copy
import dataclasses
import threading
import types
import typing
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import Engine

from app.settings import Settings
from app.store.coco_export import dataset_snapshot
from app.store.jobs import SendJob, submit_job
from app.store.models import Job
from sam3_lora.config import DEVICES, MASK_LOSS_MODES, PRECISIONS, ConfigError, TrainConfig, config_help
from sam3_lora.schedule import SCHEDULES

# The recipes of configs/quick.yaml, balanced.yaml and full_lora.yaml without the keys the
# worker sets (tests/test_finetune.py checks they match the files, which are not installed
# with the package). Keys left out take TrainConfig's defaults.
PRESETS: dict[str, dict] = {
    "Quick": {
        "lora": {"preset": "decoder", "rank": 8, "alpha": 16, "dropout": 0.0},
        "data": {"val_fraction": 0.2, "batch_size": 2, "negatives_per_image": 1,
                 "augment": {"hflip_prob": 0.5, "scale_jitter": [0.9, 1.1]}},
        "optim": {"lr": 2.0e-4, "weight_decay": 0.01, "betas": [0.9, 0.999], "grad_clip": 0.1, "grad_accumulation": 1},
        "schedule": {"decay": "cosine", "warmup_steps": 5, "max_steps": 40},
        "loss": {"mask_mode": "points"},
        "precision": "auto", "device": "auto", "seed": 0, "eval_every": 20, "checkpoint_every": 20, "log_every": 5,
    },
    "Balanced": {
        "lora": {"preset": "balanced", "rank": 16, "alpha": 32, "dropout": 0.05},
        "data": {"val_fraction": 0.1, "batch_size": 2, "negatives_per_image": 2,
                 "augment": {"hflip_prob": 0.5, "scale_jitter": [0.75, 1.25]}},
        "optim": {"lr": 1.0e-4, "weight_decay": 0.01, "betas": [0.9, 0.999], "grad_clip": 0.1, "grad_accumulation": 4},
        "schedule": {"decay": "cosine", "warmup_steps": 50, "epochs": 10},
        "loss": {"bbox": 5.0, "giou": 2.0, "ce": 20.0, "presence": 20.0, "mask": 200.0, "dice": 10.0,
                 "mask_mode": "points", "num_points": 12544},
        "precision": "auto", "device": "auto", "gpus": 1, "seed": 0,
        "eval_every": 200, "checkpoint_every": 200, "log_every": 10,
    },
    "Thorough": {
        "lora": {"preset": "full", "rank": 32, "alpha": 64, "dropout": 0.1},
        "data": {"val_fraction": 0.1, "batch_size": 1, "negatives_per_image": 2,
                 "augment": {"hflip_prob": 0.5, "scale_jitter": [0.75, 1.25]}},
        "optim": {"lr": 5.0e-5, "weight_decay": 0.05, "betas": [0.9, 0.999], "grad_clip": 0.1, "grad_accumulation": 8},
        "schedule": {"decay": "cosine", "warmup_steps": 200, "epochs": 20},
        "loss": {"mask_mode": "points"},
        "precision": "auto", "device": "auto", "gpus": 1, "seed": 0,
        "eval_every": 500, "checkpoint_every": 500, "log_every": 10,
    },
}
PRESET_FILES = {"Quick": "quick.yaml", "Balanced": "balanced.yaml", "Thorough": "full_lora.yaml"}
DEFAULT_PRESET = "Quick"

WORKER_KEYS: dict[str, str] = {
    "model.source": "the SAM3 the studio runs (named in the banner)",
    "data.train_annotations": "the worker's COCO export of the project's labels",
    "data.train_images": "the worker's COCO export of the project's labels",
    "data.val_annotations": "the project's `val` images, when it has any",
    "data.val_images": "the project's `val` images, when it has any",
    "output_dir": "DATA_DIR/jobs/<id>/run",
    "resume": "auto: a restarted job continues from its last checkpoint",
}
WORKER_PLACEHOLDER = "<set by the worker>"
CHOICES: dict[str, tuple[str, ...]] = {
    "schedule.decay": tuple(SCHEDULES), "loss.mask_mode": MASK_LOSS_MODES,
    "precision": PRECISIONS, "device": DEVICES,
}


@dataclass(frozen=True)
class FieldSpec:
    """One config key as a form field. kind: int | float (number; `optional`: may be empty), bool,
    text | choice | list (comma-separated values) | text_or_list (one name, or several with commas)."""

    key: str
    kind: str
    help: str
    optional: bool = False
    choices: tuple[str, ...] = ()

    @property
    def editable(self) -> bool:
        return self.key not in WORKER_KEYS

    @property
    def as_text(self) -> bool:
        """Edited in a text box: every non-number kind, and optional numbers, whose empty field
        means null (a browser number field sends 0 when emptied, and 0 means something for
        data.val_fraction)."""
        return self.kind not in ("int", "float", "bool", "choice") or self.optional


def _kind(hint) -> tuple[str, bool]:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    optional = type(None) in options
    options = [option for option in options if option is not type(None)]
    if len(options) == 2 and str in options:
        return "text_or_list", optional
    [only] = options
    if typing.get_origin(only) is tuple:
        return "list", optional
    return {bool: "bool", int: "int", float: "float", str: "text"}[only], optional


def field_specs(cls=TrainConfig, prefix: str = "") -> list[FieldSpec]:
    """A FieldSpec per leaf key of TrainConfig, in declaration order (sections walked in place)."""
    helps, hints, specs = config_help(), typing.get_type_hints(cls), []
    for item in dataclasses.fields(cls):
        key, hint = f"{prefix}{item.name}", hints[item.name]
        if dataclasses.is_dataclass(hint):
            specs.extend(field_specs(hint, f"{key}."))
            continue
        kind, optional = _kind(hint)
        if key in CHOICES:
            kind = "choice"
        specs.append(FieldSpec(key, kind, helps[key], optional, CHOICES.get(key, ())))
    return specs


def editable_specs() -> list[FieldSpec]:
    """The keys a user may set, in form order (every key but WORKER_KEYS)."""
    return [spec for spec in field_specs() if spec.editable]


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """{"lora": {"rank": 8}} -> {"lora.rank": 8}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: dict[str, Any]) -> dict:
    """{"lora.rank": 8} -> {"lora": {"rank": 8}}."""
    nested: dict = {}
    for key, value in flat.items():
        *sections, leaf = key.split(".")
        target = nested
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = value
    return nested


def job_train_config(values: dict, data_paths: dict, default_source: str, output_dir: str) -> TrainConfig:
    """The TrainConfig a job runs (worker/run_job.py builds it this way; the studio validates with it):
    the frozen job config, its data paths replaced by `data_paths` (val_fraction None there
    drops the config's val_fraction: the project's val images validate), model.source
    defaulting to `default_source`, `output_dir`, resume "auto"."""
    values = copy.deepcopy(values)
    data = {key: value for key, value in values.get("data", {}).items()
            if key not in ("train_annotations", "train_images", "val_annotations", "val_images")}
    data.update(data_paths)
    if data.get("val_fraction", 0) is None:
        data.pop("val_fraction")
    model = dict(values.get("model", {}))
    model.setdefault("source", default_source)
    values.update(data=data, model=model, output_dir=output_dir, resume="auto")
    return TrainConfig.from_dict(values)


def _checked(config: dict, has_val_images: bool) -> TrainConfig:
    """`config` as the worker will run it, with placeholders for what the worker sets."""
    paths = {"train_annotations": WORKER_PLACEHOLDER, "train_images": WORKER_PLACEHOLDER}
    if has_val_images:
        paths.update(val_annotations=WORKER_PLACEHOLDER, val_images=WORKER_PLACEHOLDER, val_fraction=None)
    return job_train_config(config, paths, WORKER_PLACEHOLDER, WORKER_PLACEHOLDER)


def _preset(preset: str) -> dict:
    if preset not in PRESETS:
        raise ConfigError(f"preset: unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[preset])


def preset_values(preset: str) -> dict[str, Any]:
    """{dotted key: value} of every editable key, TrainConfig's defaults filled in (the form's values)."""
    full = _checked(_preset(preset), has_val_images=False).to_dict()
    return {key: value for key, value in flatten(full).items() if key not in WORKER_KEYS}


def build_job_config(preset: str, overrides: dict[str, Any], model_source: str,
                     has_val_images: bool = False) -> dict:
    """The job row's config: the preset's full values, `overrides` ({dotted key: value}) on top,
    model.source = `model_source`; checked as the worker will build it.

    Raises ConfigError naming the key: a worker key or an unknown key in `overrides`, or any
    value TrainConfig refuses.
    """
    values = preset_values(preset)
    for key, value in overrides.items():
        if key in WORKER_KEYS:
            raise ConfigError(f"{key}: is set by the worker ({WORKER_KEYS[key]}); leave it out")
        values[key] = value
    config = unflatten(values)
    config.setdefault("model", {})["source"] = model_source
    _checked(config, has_val_images)  # unknown keys are named here too
    return config


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text  # a name in a component list, or a typo TrainConfig names


def field_value(spec: FieldSpec, raw: Any) -> Any:
    """A form field's raw value as the config value of `spec.key`.

    Numbers: None / "" -> None (refused unless optional), 3.0 -> 3 for int keys. Lists:
    "0.9, 0.999" or "[0.9, 0.999]" -> [0.9, 0.999]. text_or_list: "decoder" stays a name,
    "vision, text" becomes a list. Type and range errors are left to TrainConfig, which names the key.
    """
    if spec.kind in ("int", "float"):
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            if not spec.optional:
                raise ConfigError(f"{spec.key}: is empty; give a number")
            return None
        value = _number(raw.strip()) if isinstance(raw, str) else raw
        if spec.kind == "int" and isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    if spec.kind == "bool":
        return raw
    text = "" if raw is None else str(raw).strip()
    if spec.kind == "list" or (spec.kind == "text_or_list" and ("," in text or text.startswith("["))):
        items = [item.strip() for item in text.strip("[]").split(",") if item.strip()]
        if not items:
            raise ConfigError(f"{spec.key}: is empty; give values separated by commas")
        return [_number(item) for item in items] if spec.kind == "list" else items
    return text


def display_value(spec: FieldSpec, value: Any) -> Any:
    """A config value as its form field shows it (the inverse of field_value): lists joined by ", ",
    optional numbers as text ("" = null; see FieldSpec.as_text), None as ""."""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    if value is None:
        return None if spec.kind in ("int", "float") and not spec.optional else ""
    return str(value) if spec.as_text and spec.kind in ("int", "float") else value


def form_overrides(raw_values: dict[str, Any]) -> dict[str, Any]:
    """{dotted key: raw form value} -> {dotted key: config value}; unknown and worker keys are
    passed through for build_job_config to refuse by name."""
    specs = {spec.key: spec for spec in field_specs()}
    return {key: field_value(specs[key], raw) if key in specs else raw for key, raw in raw_values.items()}


_senders: dict[str, SendJob] = {}
_senders_lock = threading.Lock()


def train_sender(settings: Settings) -> SendJob:
    """`partial(send_train, make_celery(settings))`, built once per broker URL and process."""
    with _senders_lock:
        if settings.broker_url not in _senders:
            # Imported here: only the sending side of the worker package, and it reads the environment.
            from worker.celery_app import make_celery, send_train

            _senders[settings.broker_url] = partial(send_train, make_celery(settings))
        return _senders[settings.broker_url]


def submit_finetune(engine: Engine, project_id: int, config: dict, send: SendJob) -> Job:
    """Freeze the project's current labels (dataset_snapshot) and submit the job; JobError when refused."""
    return submit_job(engine, project_id, config, dataset_snapshot(engine, project_id), send)
