"""app.finetune: presets equal the shipped YAML recipes, every TrainConfig key is a form field
(editable or set by the worker), and overrides are used or refused with the key named."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from app import finetune
from app.finetune import (PRESET_FILES, PRESETS, WORKER_KEYS, build_job_config, editable_specs, field_specs,
                          flatten, form_overrides, preset_values)
from sam3_lora.config import ConfigError, TrainConfig, config_help

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_preset_is_its_yaml_recipe_without_the_worker_keys(preset):
    from_yaml = flatten(TrainConfig.from_yaml(CONFIGS / PRESET_FILES[preset]).to_dict())
    expected = {key: value for key, value in from_yaml.items() if key not in WORKER_KEYS}
    assert preset_values(preset) == expected


def test_every_config_key_is_a_field_and_only_worker_keys_are_locked():
    leaves = [key for key in config_help() if key not in ("model", "lora", "data", "data.augment", "optim",
                                                          "schedule", "loss")]
    specs = field_specs()
    assert [spec.key for spec in specs] == leaves
    assert {spec.key for spec in specs if not spec.editable} == set(WORKER_KEYS)
    kinds = {spec.key: spec.kind for spec in specs}
    assert (kinds["lora.rank"], kinds["optim.lr"], kinds["optim.betas"], kinds["lora.preset"],
            kinds["precision"]) == ("int", "float", "list", "text_or_list", "choice")
    as_text = {spec.key for spec in specs if spec.editable and spec.as_text}
    assert {"data.val_fraction", "data.image_size", "schedule.epochs", "loss.num_points"} <= as_text
    assert "lora.rank" not in as_text and "precision" not in as_text


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


def test_form_values_become_config_values_and_bad_ones_name_the_key():
    overrides = form_overrides({"lora.rank": 4.0, "optim.betas": "[0.8, 0.99]", "lora.preset": "vision, text",
                                "data.image_size": "", "data.val_fraction": "0", "loss.num_points": "64",
                                "schedule.decay": "linear", "loss.mask_mode": " points "})
    assert overrides == {"lora.rank": 4, "optim.betas": [0.8, 0.99], "lora.preset": ["vision", "text"],
                         "data.image_size": None, "data.val_fraction": 0, "loss.num_points": 64,
                         "schedule.decay": "linear", "loss.mask_mode": "points"}
    config = build_job_config("Quick", {**overrides, "eval_every": 0}, model_source="m")
    assert config["data"]["val_fraction"] == 0.0 and config["lora"]["preset"] == ["vision", "text"] and config["optim"]["betas"] == [0.8, 0.99]
    with pytest.raises(ConfigError, match="lora.rank: is empty"):
        form_overrides({"lora.rank": None})
    with pytest.raises(ConfigError, match="data.image_size: expected an integer or null, got str 'big'"):
        build_job_config("Quick", form_overrides({"data.image_size": "big"}), model_source="m")
    with pytest.raises(ConfigError, match="optim.betas: expected a list of 2"):
        build_job_config("Quick", form_overrides({"optim.betas": "0.9"}), model_source="m")
    with pytest.raises(ConfigError, match="optim.lr: expected a finite number, got str 'fast'"):
        build_job_config("Quick", form_overrides({"optim.lr": "fast"}), model_source="m")


def test_the_form_round_trips_each_preset():
    for preset in PRESETS:
        values = preset_values(preset)
        shown = {spec.key: finetune.display_value(spec, values[spec.key]) for spec in editable_specs()}
        assert build_job_config(preset, form_overrides(shown), "m") == build_job_config(preset, {}, "m")
