"""A fine-tune job's recipe: preset + overrides -> the job row's config -> the TrainConfig it runs.

    values  = preset_recipe(preset) (app/jobs/presets/*.yaml, which configs/ links to)
              with overrides {dotted key: value} on top
    config  = values + model.source = the SAM3 the studio runs (studio.models.status().source)
    check   = job_train_config(config, placeholders): TrainConfig.from_dict exactly as the worker builds it

Every TrainConfig key is either editable or set by the worker (WORKER_KEYS: data paths,
output_dir, resume, model.source, model.base_model); an override of a worker key, an unknown key or a bad
value is a ConfigError whose message starts with the dotted key. The Train tab's form
fields live in app/ui/train_form.py; worker/run_job.py builds its TrainConfig here.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from typing import Any

from sam3_lora.config import ConfigError, TrainConfig

# The studio's presets are the command line's recipes, read from the same files (package
# data of app.jobs; the top-level configs/ is a link to that folder).
PRESET_FILES = {"Quick": "quick.yaml", "Balanced": "balanced.yaml", "Thorough": "full_lora.yaml"}
PRESET_NAMES = tuple(PRESET_FILES)
DEFAULT_PRESET = "Quick"

WORKER_KEYS: dict[str, str] = {
    "model.source": "the SAM3 the studio runs (named in the banner)",
    "model.base_model": "SAM3_BASE_MODEL: the hub id model cards name when SAM3_MODEL is a folder",
    "data.train_annotations": "the worker's COCO export of the project's labels",
    "data.train_images": "the worker's COCO export of the project's labels",
    "data.val_annotations": "the project's `val` images, when it has any",
    "data.val_images": "the project's `val` images, when it has any",
    "output_dir": "DATA_DIR/jobs/<id>/run",
    "resume": "auto: a restarted job continues from its last checkpoint",
}
WORKER_PLACEHOLDER = "<set by the worker>"


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


@lru_cache(maxsize=None)
def _recipe_file_values(file_name: str) -> dict[str, Any]:
    """{dotted key: value} of the preset file, read and checked as `sam3-lora train --config` reads it."""
    with resources.as_file(resources.files(__package__) / "presets" / file_name) as path:
        return flatten(TrainConfig.from_yaml(path).to_dict())


def preset_recipe(preset: str) -> dict:
    """The preset's recipe (its YAML file, TrainConfig's defaults filled in) without the worker keys."""
    if preset not in PRESET_FILES:
        raise ConfigError(f"preset: unknown preset {preset!r}; use one of {', '.join(PRESET_FILES)}")
    values = _recipe_file_values(PRESET_FILES[preset])
    return unflatten({key: copy.deepcopy(value) for key, value in values.items() if key not in WORKER_KEYS})


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


def preset_values(preset: str) -> dict[str, Any]:
    """{dotted key: value} of every editable key, TrainConfig's defaults filled in (the form's values)."""
    full = _checked(preset_recipe(preset), has_val_images=False).to_dict()
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
