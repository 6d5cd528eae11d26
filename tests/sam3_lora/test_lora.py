"""LoRA on the tiny SAM3: targets, gradients, counts, atomic save, strict load."""
from __future__ import annotations

import json
import re

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from transformers import Sam3Config, Sam3Model

from sam3_lora import adapter_io
from sam3_lora.adapter_io import CONFIG_FILE, WEIGHTS_FILE, AdapterFolderError, load_adapter, save_adapter
from sam3_lora.lora import (
    COMPONENTS,
    PRESETS,
    LoraSettings,
    LoraTargetError,
    apply_lora,
    build_lora_config,
    lora_modules_by_component,
    resolve_components,
    target_modules_regex,
    trainable_parameter_counts,
)
from sam3_lora.model import load_sam3, tokenize_phrases

OUTPUT_NAMES = ("pred_logits", "pred_boxes", "pred_masks", "presence_logits")


@pytest.fixture(scope="module")
def prompt_batch(tiny_model_dir) -> dict[str, torch.Tensor]:
    """Two (image, phrase) find-queries at the tiny model's 112 px."""
    _, tokenizer = load_sam3(tiny_model_dir)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(2, 3, 112, 112, generator=generator) * 2 - 1
    return {"pixel_values": pixels, **tokenize_phrases(tokenizer, ["a cat", "red car"])}


def fresh_base(tiny_model_dir) -> Sam3Model:
    return load_sam3(tiny_model_dir)[0]


def lora_model(tiny_model_dir, components, seed: int = 0) -> PeftModel:
    """LoRA model whose B matrices are random: with peft's zero B, lora_A gets no gradient and the
    adapter equals the base model, which would make the gradient and save/load checks vacuous."""
    model = apply_lora(fresh_base(tiny_model_dir), LoraSettings(components=components, rank=4, alpha=8))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_B." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def outputs_of(model, batch) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        result = model(**batch)
    return {name: getattr(result, name) for name in OUTPUT_NAMES}


def assert_outputs_close(actual, expected, atol: float) -> None:
    for name in OUTPUT_NAMES:
        torch.testing.assert_close(actual[name], expected[name], atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")


# --- components, presets, settings -------------------------------------------------


def test_presets_and_lists_resolve_to_components_in_fixed_order():
    assert resolve_components("decoder") == ("detr_decoder", "mask_decoder", "heads")
    assert resolve_components("balanced") == ("detr_encoder", "detr_decoder", "mask_decoder", "heads")
    assert resolve_components("full") == ("vision", "detr_encoder", "detr_decoder", "mask_decoder", "heads")
    assert resolve_components(["text", "decoder", "mask_decoder"]) == ("detr_decoder", "mask_decoder", "heads", "text")
    assert "text" not in {name for preset in PRESETS.values() for name in preset}


def test_unknown_preset_error_lists_the_valid_names():
    with pytest.raises(LoraTargetError) as error:
        LoraSettings(components="everything")
    message = str(error.value)
    assert "'everything'" in message
    for name in [*PRESETS, *COMPONENTS]:
        assert name in message
    with pytest.raises(LoraTargetError, match="'geometry_encoder'"):
        LoraSettings(components=["decoder", "geometry_encoder"])


@pytest.mark.parametrize(
    ("field_values", "needle"),
    [({"rank": 0}, "rank"), ({"rank": 2.5}, "rank"), ({"alpha": 0}, "alpha"), ({"dropout": 1.0}, "dropout"),
     ({"dropout": -0.1}, "dropout"), ({"components": []}, "no LoRA components")],
)
def test_bad_settings_are_refused_with_the_field_named(field_values, needle):
    with pytest.raises(ValueError, match=needle):
        LoraSettings(**field_values)


def test_lora_config_holds_one_regex_string():
    config = build_lora_config(LoraSettings(components="decoder", rank=8, alpha=16, dropout=0.1))
    assert isinstance(config.target_modules, str)
    assert config.target_modules == target_modules_regex(("detr_decoder", "mask_decoder", "heads"))
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.1)


def test_regexes_cover_the_real_sam3_architecture_and_never_the_geometry_encoder():
    """Real SAM3 sizes (32 ViT layers, 6+6 DETR layers, 24 CLIP layers), built on the meta device."""
    with torch.device("meta"):
        model = apply_lora(Sam3Model(Sam3Config()), LoraSettings(components=[*COMPONENTS]))
    found = lora_modules_by_component(model)
    assert {name: len(found[name]) for name in found} == {
        "vision": 32 * 6, "detr_encoder": 6 * 10, "detr_decoder": 6 * 14, "mask_decoder": 4 + 3, "text": 24 * 6,
        # box_head 3 + presence_head 3 + scorer text_mlp 2 + text_proj + query_proj
        "heads": 3 + 3 + 2 + 1 + 1,
    }
    wrapped = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    assert not [name for name in wrapped if "geometry_encoder" in name or name.endswith("text_projection")]


# --- injection, gradients, counts -----------------------------------------------------


@pytest.mark.parametrize("components", ["decoder", "balanced", "full", ["text"], [*COMPONENTS]], ids=str)
def test_every_lora_tensor_gets_a_gradient_from_a_text_prompt(tiny_model_dir, prompt_batch, components):
    model = lora_model(tiny_model_dir, components)
    model.train()
    result = model(**prompt_batch)
    loss = (result.pred_logits.square().mean() + result.pred_boxes.square().mean()
            + result.pred_masks.square().mean() + result.presence_logits.square().mean())
    loss.backward()

    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    without_gradient = [name for name, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without_gradient == []

    asked = set(resolve_components(components))
    counts = trainable_parameter_counts(model)
    assert {name for name in COMPONENTS if counts[name] > 0} == asked
    assert counts["other"] == 0
    assert counts["trainable"] == sum(counts[name] for name in COMPONENTS) == sum(p.numel() for p in trainable.values())
    assert counts["base"] == sum(p.numel() for p in fresh_base(tiny_model_dir).parameters())


def test_decoder_preset_wraps_exactly_the_expected_tiny_modules(tiny_model_dir):
    found = lora_modules_by_component(lora_model(tiny_model_dir, "decoder"))
    assert len(found["detr_decoder"]) == 2 * 14  # 2 layers x (3 attentions x 4 + fc1 + fc2)
    assert sorted(re.sub(r".*mask_decoder\.", "", name) for name in found["mask_decoder"]) == [
        "mask_embedder.layers.0", "mask_embedder.layers.1", "mask_embedder.layers.2",
        "prompt_cross_attn.k_proj", "prompt_cross_attn.o_proj", "prompt_cross_attn.q_proj", "prompt_cross_attn.v_proj",
    ]
    assert not found["vision"] and not found["detr_encoder"] and not found["text"] and not found.get("other")


def test_a_component_that_matches_nothing_is_an_error(tiny_model_dir):
    """A model holding only the DETR decoder: the mask_decoder part of the preset injects nothing."""
    partial = torch.nn.Module()
    partial.detr_decoder = fresh_base(tiny_model_dir).detr_decoder
    with pytest.raises(LoraTargetError, match="mask_decoder"):
        apply_lora(partial, LoraSettings(components="decoder"))


# --- save / load ---------------------------------------------------------------------


def test_save_then_load_reproduces_outputs_unmerged_merged_and_with_plain_peft(tiny_model_dir, prompt_batch, tmp_path):
    trained = lora_model(tiny_model_dir, "full")
    expected = outputs_of(trained, prompt_batch)
    base_outputs = outputs_of(fresh_base(tiny_model_dir), prompt_batch)
    assert not torch.allclose(expected["pred_masks"], base_outputs["pred_masks"], atol=1e-3)  # adapter matters

    folder = save_adapter(trained, tmp_path / "adapter")
    assert {CONFIG_FILE, WEIGHTS_FILE} <= {path.name for path in folder.iterdir()}
    assert [path.name for path in tmp_path.iterdir()] == ["adapter"]  # no temp sibling left

    assert_outputs_close(outputs_of(load_adapter(fresh_base(tiny_model_dir), folder), prompt_batch), expected, 1e-6)

    merged = load_adapter(fresh_base(tiny_model_dir), folder, merge=True)
    assert isinstance(merged, Sam3Model)
    assert not any(isinstance(module, LoraLayer) for module in merged.modules())
    assert_outputs_close(outputs_of(merged, prompt_batch), expected, 1e-5)

    by_user = PeftModel.from_pretrained(Sam3Model.from_pretrained(tiny_model_dir), folder)
    assert_outputs_close(outputs_of(by_user, prompt_batch), expected, 1e-6)


def test_load_for_further_training_keeps_lora_trainable(tiny_model_dir, tmp_path):
    folder = save_adapter(lora_model(tiny_model_dir, "decoder"), tmp_path / "adapter")
    counts = trainable_parameter_counts(load_adapter(fresh_base(tiny_model_dir), folder, trainable=True))
    assert counts["detr_decoder"] > 0 and counts["mask_decoder"] > 0 and counts["vision"] == 0


def test_config_edited_to_a_smaller_preset_is_refused_naming_the_keys(tiny_model_dir, tmp_path):
    folder = save_adapter(lora_model(tiny_model_dir, "full"), tmp_path / "adapter")
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["target_modules"] = target_modules_regex(resolve_components("decoder"))
    (folder / CONFIG_FILE).write_text(json.dumps(config))

    base = fresh_base(tiny_model_dir)
    with pytest.raises(AdapterFolderError) as error:
        load_adapter(base, folder)
    message = str(error.value)
    assert "unexpected" in message
    assert "vision_encoder.backbone.layers.0.attention.q_proj.lora_A.weight" in message
    assert "detr_encoder.layers.0.mlp.fc2.lora_B.weight" in message
    assert not any(isinstance(module, LoraLayer) for module in base.modules())  # base model handed back clean


def test_config_edited_to_another_rank_is_refused_naming_the_shapes(tiny_model_dir, tmp_path):
    folder = save_adapter(lora_model(tiny_model_dir, "decoder"), tmp_path / "adapter")
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["r"] = 8  # saved with rank 4
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(AdapterFolderError, match=r"size mismatch for .*detr_decoder\.layers\.0\.self_attn\.q_proj"):
        load_adapter(fresh_base(tiny_model_dir), folder)


def test_renamed_tensor_is_refused_naming_both_keys(tiny_model_dir, tmp_path):
    folder = save_adapter(lora_model(tiny_model_dir, "decoder"), tmp_path / "adapter")
    tensors = load_file(folder / WEIGHTS_FILE)
    original = next(key for key in sorted(tensors) if "mask_embedder.layers.1.lora_A" in key)
    renamed = original.replace("layers.1", "layers.7")
    tensors[renamed] = tensors.pop(original)
    save_file(tensors, folder / WEIGHTS_FILE)

    with pytest.raises(AdapterFolderError) as error:
        load_adapter(fresh_base(tiny_model_dir), folder)
    message = str(error.value)
    assert f"missing from {WEIGHTS_FILE}" in message and original in message
    assert renamed in message


def test_a_dropped_tensor_is_refused(tiny_model_dir, tmp_path):
    folder = save_adapter(lora_model(tiny_model_dir, "decoder"), tmp_path / "adapter")
    tensors = load_file(folder / WEIGHTS_FILE)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, folder / WEIGHTS_FILE)
    with pytest.raises(AdapterFolderError, match=re.escape(dropped)):
        load_adapter(fresh_base(tiny_model_dir), folder)


def test_incomplete_or_absent_folder_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(AdapterFolderError, match="does not exist"):
        load_adapter(fresh_base(tiny_model_dir), tmp_path / "nowhere")
    folder = save_adapter(lora_model(tiny_model_dir, "decoder"), tmp_path / "adapter")
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(AdapterFolderError, match=WEIGHTS_FILE):
        load_adapter(fresh_base(tiny_model_dir), folder)


@pytest.mark.parametrize("exchange_supported", [True, False], ids=["renameat2", "two-renames"])
def test_saving_over_an_adapter_replaces_it_whole(tiny_model_dir, prompt_batch, tmp_path, monkeypatch,
                                                  exchange_supported):
    if not exchange_supported:
        monkeypatch.setattr(adapter_io, "_exchange", lambda first, second: False)
    folder = save_adapter(lora_model(tiny_model_dir, "decoder", seed=1), tmp_path / "adapter")
    second = lora_model(tiny_model_dir, "decoder", seed=2)
    save_adapter(second, folder)
    assert_outputs_close(outputs_of(load_adapter(fresh_base(tiny_model_dir), folder), prompt_batch),
                         outputs_of(second, prompt_batch), 1e-6)
    assert [path.name for path in tmp_path.iterdir()] == ["adapter"]


def test_a_half_written_save_never_replaces_the_previous_adapter(tiny_model_dir, prompt_batch, tmp_path):
    previous = lora_model(tiny_model_dir, "decoder", seed=1)
    folder = save_adapter(previous, tmp_path / "adapter")
    previous_bytes = (folder / WEIGHTS_FILE).read_bytes()

    # 1. The process dies while writing: only a temp sibling with a partial file remains.
    leave_crashed_temp(tmp_path)
    assert_outputs_close(outputs_of(load_adapter(fresh_base(tiny_model_dir), folder), prompt_batch),
                         outputs_of(previous, prompt_batch), 1e-6)

    # 2. A save that fails mid-write (disk full) keeps the previous adapter and cleans up its temp folder
    #    (and, on the way in, the stale one from step 1).
    failing = lora_model(tiny_model_dir, "decoder", seed=2)

    def write_half_then_fail(target, **kwargs):
        (target / CONFIG_FILE).write_text("{}")
        (target / WEIGHTS_FILE).write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device")

    failing.save_pretrained = write_half_then_fail
    with pytest.raises(OSError, match="No space left"):
        save_adapter(failing, folder)
    assert (folder / WEIGHTS_FILE).read_bytes() == previous_bytes
    assert [path.name for path in tmp_path.iterdir()] == ["adapter"]

    # 3. After another crash, the next good save removes the stale temp and replaces the adapter.
    leave_crashed_temp(tmp_path)
    save_adapter(lora_model(tiny_model_dir, "decoder", seed=3), folder)
    assert [path.name for path in tmp_path.iterdir()] == ["adapter"]
    assert (folder / WEIGHTS_FILE).read_bytes() != previous_bytes


def leave_crashed_temp(parent) -> None:
    """What a save killed mid-write leaves: a temp sibling with a config and half a weights file."""
    crashed = parent / ".adapter.tmp-crashed"
    crashed.mkdir()
    (crashed / CONFIG_FILE).write_text("{}")
    (crashed / WEIGHTS_FILE).write_bytes((parent / "adapter" / WEIGHTS_FILE).read_bytes()[:1000])


def test_a_crash_between_the_two_fallback_renames_is_recovered_by_the_next_save(tiny_model_dir, tmp_path):
    folder = save_adapter(lora_model(tiny_model_dir, "decoder", seed=1), tmp_path / "adapter")
    backup = tmp_path / ".adapter.old-crashed"
    backup.mkdir()
    folder.rename(backup / "adapter")  # the state after the first rename, before the second
    adapter_io._recover_interrupted_swap(folder)
    assert (folder / WEIGHTS_FILE).is_file() and not backup.exists()
