"""TrainConfig: unknown keys, wrong types and bad values are errors naming the key; round trips are exact."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from sam3_lora.config import ConfigError, TrainConfig, config_help, resolve_device, resolve_precision
from sam3_lora.losses import LossWeights, build_criterion

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
MINIMAL = {
    "data": {"train_annotations": "data/train.json", "train_images": "data/images"},
    "schedule": {"max_steps": 100},
}


def with_change(path: str, value) -> dict:
    """MINIMAL with the dotted key `path` set to `value` (sections created as needed)."""
    values = copy.deepcopy(MINIMAL)
    *sections, leaf = path.split(".")
    node = values
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = value
    return values


def config_error(values: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict(values)
    return str(caught.value)


def test_minimal_config_fills_documented_defaults():
    config = TrainConfig.from_dict(MINIMAL)
    assert config.model.source == "facebook/sam3"
    assert (config.loss.bbox, config.loss.giou, config.loss.ce, config.loss.presence, config.loss.mask,
            config.loss.dice) == (5.0, 2.0, 20.0, 20.0, 200.0, 10.0)
    assert config.data.val_fraction == 0.1  # no val json -> the default split
    assert config.loss.num_points == 112 * 112
    assert config.loss.pos_weight == 10.0 and config.loss.scale_by_find_batch_size is False  # SAM3's defaults
    assert config.optim.betas == (0.9, 0.999)


def test_the_loss_section_is_the_criterions_loss_weights():
    config = TrainConfig.from_dict(with_change("loss.presence", 4))
    assert isinstance(config.loss, LossWeights)
    assert config.loss.by_term() == LossWeights(presence=4.0).by_term()  # the six weights, no other key
    assert build_criterion(config.loss).weights["loss_presence"] == 4.0


def test_every_field_has_help():
    helps = config_help()
    assert "schedule.warmup_steps" in helps and "data.augment.scale_jitter" in helps
    assert all(text.strip() for text in helps.values()), [key for key, text in helps.items() if not text.strip()]


@pytest.mark.parametrize(
    ("path", "suggestion"),
    [
        ("optim.warmup", "schedule.warmup_steps"),  # wrong section: suggests the right one
        ("lr", "optim.lr"),
        ("optimizer", "optim"),
        ("data.augment.hflip", "data.augment.hflip_prob"),  # three levels deep
        ("schedule.epoch", "schedule.epochs"),
    ],
)
def test_unknown_key_names_dotted_path_and_closest_key(path, suggestion):
    message = config_error(with_change(path, 1))
    assert f"unknown key '{path}'" in message
    assert f"did you mean '{suggestion}'?" in message


def test_every_unknown_key_is_reported_at_once():
    values = with_change("data.val_frac", 0.2)
    values["data"]["imgsize"] = 336
    message = config_error(values)
    assert "'data.val_frac'" in message and "'data.val_fraction'" in message
    assert "'data.imgsize'" in message and "'data.image_size'" in message


def test_unknown_key_without_close_match_lists_valid_keys():
    message = config_error(with_change("optim.zzzzzz", 1))
    assert "unknown key 'optim.zzzzzz'" in message and "grad_clip" in message


@pytest.mark.parametrize(
    ("path", "value", "key_in_message", "hint"),
    [
        ("optim.lr", -1e-4, "optim.lr", "> 0"),
        ("optim.lr", "fast", "optim.lr", "expected a finite number, got str 'fast'"),
        ("optim.lr", float("nan"), "optim.lr", "finite"),
        ("optim.grad_accumulation", 0, "optim.grad_accumulation", ">= 1"),
        ("optim.grad_accumulation", 2.5, "optim.grad_accumulation", "expected an integer"),
        ("optim.grad_accumulation", True, "optim.grad_accumulation", "got bool"),
        ("optim.betas", [0.9, 1.0], "optim.betas", "[0, 1)"),
        ("optim.betas", [0.9], "optim.betas", "a list of 2"),
        ("optim.grad_clip", -1, "optim.grad_clip", ">= 0"),
        ("schedule.decay", "cosinus", "schedule.decay", "cosine, linear, constant"),
        ("schedule.warmup_steps", 100, "schedule.warmup_steps", "below schedule.max_steps"),
        ("data.image_size", 1000, "data.image_size", "multiple of 14"),
        ("data.val_fraction", 1.0, "data.val_fraction", "[0, 1)"),
        ("data.val_fraction", -0.1, "data.val_fraction", "[0, 1)"),
        ("data.val_images", "v", "data.val_images", "without data.val_annotations"),
        ("data.augment.scale_jitter", [1.2, 0.8], "data.augment.scale_jitter", "min <= max"),
        ("data.augment.hflip_prob", 2, "data.augment.hflip_prob", "[0, 1]"),
        ("data.batch_size", 0, "data.batch_size", ">= 1"),
        ("lora.preset", "everything", "lora.preset", "decoder, balanced, full"),
        ("lora.preset", ["text", "visoin"], "lora.preset", "'visoin'"),
        ("lora.preset", [], "lora.preset", "empty"),
        ("lora.rank", 0, "lora.rank", ">= 1"),
        ("lora.dropout", 1.0, "lora.dropout", "[0, 1)"),
        ("loss.mask_mode", "pixels", "loss.mask_mode", "points, full"),
        ("loss.dice", -1, "loss.dice", ">= 0"),
        ("loss.pos_weight", -5, "loss.pos_weight", ">= 0"),
        ("loss.scale_by_find_batch_size", "yes", "loss.scale_by_find_batch_size", "expected a boolean"),
        ("loss.scale_by_find_batch_size", 1, "loss.scale_by_find_batch_size", "got int"),
        ("loss", {"bbox": 0, "giou": 0, "ce": 0, "presence": 0, "mask": 0, "dice": 0}, "loss", "all loss weights are 0"),
        ("precision", "fp8", "precision", "auto, bf16, fp16, fp32"),
        ("device", "tpu", "device", "auto, cpu, cuda"),
        ("gpus", 0, "gpus", ">= 1"),
        ("log_every", 0, "log_every", ">= 1"),
        ("data", 5, "data", "expected a mapping"),
    ],
)
def test_bad_value_names_the_key(path, value, key_in_message, hint):
    message = config_error(with_change(path, value))
    assert message.startswith(f"{key_in_message}:"), message
    assert hint in message, message


def test_epochs_and_max_steps_exactly_one():
    both = with_change("schedule.epochs", 3)
    neither = copy.deepcopy(MINIMAL)
    del neither["schedule"]
    for values in (both, neither):
        message = config_error(values)
        assert "schedule.epochs" in message and "schedule.max_steps" in message and "exactly one" in message
    assert TrainConfig.from_dict({**MINIMAL, "schedule": {"epochs": 3}}).schedule.max_steps is None


def test_val_json_and_val_fraction_are_exclusive():
    values = with_change("data.val_annotations", "val.json")
    values["data"]["val_images"] = "val"
    assert TrainConfig.from_dict(values).data.val_fraction is None
    values["data"]["val_fraction"] = 0.2
    assert "data.val_fraction: set either" in config_error(values)
    del values["data"]["val_images"], values["data"]["val_fraction"]
    assert config_error(values).startswith("data.val_images:")


def test_dependent_keys_are_rejected_not_ignored():
    assert config_error(with_change("loss", {"mask_mode": "full", "num_points": 100})).startswith("loss.num_points:")
    no_validation = with_change("data.val_fraction", 0.0)
    assert config_error(no_validation).startswith("eval_every:")
    no_validation["eval_every"] = 0
    assert not TrainConfig.from_dict(no_validation).data.has_validation
    assert TrainConfig.from_dict({**with_change("gpus", 2), "device": "cpu"}).gpus == 2  # gloo processes on CPU


def test_missing_required_key_says_what_it_is():
    values = copy.deepcopy(MINIMAL)
    del values["data"]["train_images"]
    message = config_error(values)
    assert "missing key 'data.train_images'" in message and "Folder" in message


def test_dict_round_trip_is_exact_and_json_plain():
    values = with_change("lora.preset", ["text", "mask_decoder"])
    values["optim"] = {"lr": 3e-4, "betas": [0.8, 0.99]}
    values["loss"] = {"mask_mode": "full", "pos_weight": 5, "scale_by_find_batch_size": True}
    values["resume"] = "auto"
    config = TrainConfig.from_dict(values)
    frozen = json.loads(json.dumps(config.to_dict()))  # what the job row stores
    assert frozen == config.to_dict()
    assert TrainConfig.from_dict(frozen) == config
    assert config.lora.preset == ("text", "mask_decoder") and frozen["lora"]["preset"] == ["text", "mask_decoder"]


def test_yaml_round_trip(tmp_path):
    config = TrainConfig.from_dict(with_change("optim.weight_decay", 0))
    (tmp_path / "effective.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    assert TrainConfig.from_yaml(tmp_path / "effective.yaml") == config


def test_yaml_reads_exponent_floats_and_refuses_duplicates(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {train_annotations: a.json, train_images: i}\n"
                    "schedule: {max_steps: 10}\noptim:\n  lr: 1e-4\nresume: none\n")
    config = TrainConfig.from_yaml(path)
    assert config.optim.lr == 1e-4 and config.resume is None  # PyYAML alone reads 1e-4 as a string
    path.write_text("schedule: {max_steps: 10}\nschedule: {max_steps: 20}\n")
    with pytest.raises(ConfigError, match="duplicate key 'schedule'"):
        TrainConfig.from_yaml(path)


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML"):
        TrainConfig.from_yaml(path)
    path.write_text("data: {train_annotations: a.json, train_images: i}\nschedule: {max_steps: 10}\nwarmup: 3\n")
    with pytest.raises(ConfigError, match=f"{path}: unknown key 'warmup'"):
        TrainConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="no such config file"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


def test_every_shipped_config_loads():
    paths = sorted(CONFIGS_DIR.glob("*.yaml"))
    assert {path.name for path in paths} >= {"quick.yaml", "balanced.yaml", "full_lora.yaml"}
    for path in paths:
        config = TrainConfig.from_yaml(path)
        assert config.data.train_annotations == "data/synthetic/annotations.json", path
        assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_yaml(CONFIGS_DIR / "quick.yaml").lora.preset == "decoder"
    assert TrainConfig.from_yaml(CONFIGS_DIR / "full_lora.yaml").lora.preset == "full"


def test_precision_and_device_resolution_on_cpu():
    assert resolve_precision("fp32", "cpu") == torch.float32
    if not torch.cuda.is_available():
        assert resolve_precision("auto", "cpu") == torch.float32  # auto never picks bf16 off CUDA
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="device: cuda"):
            resolve_device("cuda")
    for low in ("bf16", "fp16"):  # refused on a CPU: several times slower than fp32 there, nothing saved
        with pytest.raises(ConfigError, match=f"precision: {low} needs a CUDA GPU.*use fp32 or auto"):
            resolve_precision(low, "cpu")
    with pytest.raises(ConfigError, match="precision: unknown"):
        resolve_precision("fp8", "cpu")


def test_the_full_preset_file_lists_the_components_of_presets_full():
    from sam3_lora.lora import PRESETS

    text = (CONFIGS_DIR / "full_lora.yaml").read_text()
    line = next(line for line in text.splitlines() if line.strip().startswith("preset: full"))
    assert tuple(line.split("same as [", 1)[1].split("]", 1)[0].split(", ")) == PRESETS["full"]
    assert TrainConfig.from_yaml(CONFIGS_DIR / "full_lora.yaml").checkpoint_vision


def test_gradient_checkpointing_defaults_to_lora_in_the_vit():
    assert not TrainConfig.from_dict(MINIMAL).checkpoint_vision  # decoder preset: frozen ViT, nothing to keep
    assert TrainConfig.from_dict(with_change("lora.preset", "full")).checkpoint_vision
    assert TrainConfig.from_dict(with_change("lora.preset", ["vision"])).checkpoint_vision
    values = with_change("lora.preset", "full")
    values["gradient_checkpointing"] = False
    assert not TrainConfig.from_dict(values).checkpoint_vision


def test_loader_workers_and_backbone_cache_are_checked():
    assert TrainConfig.from_dict(MINIMAL).data.num_workers is None  # chosen from the CPU count at train time
    assert TrainConfig.from_dict(with_change("data.num_workers", 0)).data.num_workers == 0
    assert "data.num_workers: must be >= 0" in config_error(with_change("data.num_workers", -1))
    assert "needs augmentation off" in config_error(with_change("data.cache_backbone", True))
    values = with_change("data.cache_backbone", True)
    values["data"]["augment"] = {"hflip_prob": 0.0, "scale_jitter": [1, 1]}
    assert TrainConfig.from_dict(values).data.cache_backbone
    values["lora"] = {"preset": "full"}
    assert "needs a ViT without LoRA" in config_error(values)
