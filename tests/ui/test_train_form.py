"""app.ui.train_form: every TrainConfig key is a form field (editable or set by the worker),
and form values become config values, or are refused with the key named."""
from __future__ import annotations

import pytest

from app.jobs.recipe import PRESET_NAMES, WORKER_KEYS, build_job_config, preset_values
from app.ui.train_form import display_value, editable_specs, field_specs, form_overrides
from sam3_lora.config import ConfigError, config_help


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
    for preset in PRESET_NAMES:
        values = preset_values(preset)
        shown = {spec.key: display_value(spec, values[spec.key]) for spec in editable_specs()}
        assert build_job_config(preset, form_overrides(shown), "m") == build_job_config(preset, {}, "m")


def test_an_optional_boolean_is_auto_true_or_false():
    """gradient_checkpointing: unset (null) means the preset decides; the form shows "auto"."""
    [spec] = [spec for spec in field_specs() if spec.key == "gradient_checkpointing"]
    assert spec.kind == "choice" and spec.choices == ("auto", "true", "false")
    assert form_overrides({"gradient_checkpointing": "auto"}) == {"gradient_checkpointing": None}
    assert form_overrides({"gradient_checkpointing": "false"}) == {"gradient_checkpointing": False}
    assert [display_value(spec, value) for value in (None, True, False)] == ["auto", "true", "false"]
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        build_job_config(PRESET_NAMES[0], form_overrides({"gradient_checkpointing": "sometimes"}), "tiny")
