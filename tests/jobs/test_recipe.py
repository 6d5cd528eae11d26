"""app.jobs.recipe: the presets are the shipped YAML recipes (one copy, package data that
configs/ links to), and overrides are used or refused with the key named."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from app.jobs.recipe import (DEFAULT_PRESET, PRESET_FILES, PRESET_NAMES, WORKER_KEYS, build_job_config, flatten,
                             preset_recipe, preset_values)
from sam3_lora.config import ConfigError, TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
PRESETS_DIR = REPO_ROOT / "app" / "jobs" / "presets"


def test_the_presets_are_the_command_lines_recipe_files_shipped_with_the_package():
    assert (REPO_ROOT / "configs").resolve() == PRESETS_DIR  # `sam3-lora train --config configs/quick.yaml`
    assert sorted(PRESET_FILES.values()) == sorted(path.name for path in PRESETS_DIR.glob("*.yaml"))
    assert DEFAULT_PRESET in PRESET_NAMES == tuple(PRESET_FILES)
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"]["package-data"]["app.jobs"]
    assert all(any(PRESETS_DIR.joinpath(name).relative_to(PRESETS_DIR.parent).match(pattern)
                   for pattern in package_data) for name in PRESET_FILES.values())


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_a_preset_is_its_file_without_the_worker_keys(preset):
    from_file = flatten(TrainConfig.from_yaml(PRESETS_DIR / PRESET_FILES[preset]).to_dict())
    recipe = flatten(preset_recipe(preset))
    assert recipe == {key: value for key, value in from_file.items() if key not in WORKER_KEYS}
    assert preset_values(preset) == recipe  # the form's values: every editable key
    recipe_copy = preset_recipe(preset)
    recipe_copy["lora"]["rank"] = -1  # callers get their own copy
    assert preset_recipe(preset)["lora"]["rank"] == from_file["lora.rank"]


def test_an_unknown_preset_is_refused_by_name():
    with pytest.raises(ConfigError, match="preset: unknown preset 'Fast'; use one of Quick, Balanced, Thorough"):
        preset_values("Fast")


def test_overrides_are_applied_and_the_model_source_is_the_studios():
    config = build_job_config("Balanced", {"lora.rank": 4, "schedule.epochs": None, "schedule.max_steps": 70},
                              model_source="/models/tiny")
    assert config["model"] == {"source": "/models/tiny"}
    assert config["lora"]["rank"] == 4 and config["lora"]["preset"] == "balanced"
    assert (config["schedule"]["epochs"], config["schedule"]["max_steps"]) == (None, 70)
    assert "output_dir" not in config and "resume" not in config and "train_annotations" not in config["data"]
    json.dumps(config, allow_nan=False)  # storable in the job row


@pytest.mark.parametrize("overrides, key", [
    ({"lora.rank": 0}, "lora.rank: must be >= 1"),
    ({"lora.rnk": 4}, "unknown key 'lora.rnk' — did you mean 'lora.rank'?"),
    ({"output_dir": "/tmp/x"}, "output_dir: is set by the worker"),
    ({"model.source": "facebook/sam3"}, "model.source: is set by the worker"),
    ({"schedule.max_steps": 10}, "schedule.epochs/schedule.max_steps: set exactly one"),  # Balanced sets epochs
    ({"data.image_size": 113}, "data.image_size: must be a positive multiple of 14"),
    ({"device": "tpu"}, "device: unknown device 'tpu'"),
])
def test_bad_overrides_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        build_job_config("Balanced", overrides, model_source="/models/tiny")
    assert key in str(error.value)


def test_eval_needs_validation_unless_the_project_has_val_images():
    overrides = {"data.val_fraction": 0.0}
    with pytest.raises(ConfigError, match="eval_every: is set but there is no validation data"):
        build_job_config("Quick", overrides, model_source="m")
    config = build_job_config("Quick", overrides, model_source="m", has_val_images=True)  # the worker uses val images
    assert config["eval_every"] == 20
