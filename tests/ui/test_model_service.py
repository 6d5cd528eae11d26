"""The studio's proposal models: SAM3_MODEL when it loads, else the tiny SAM3 with a loud
banner; adapter predictors on top of the loaded base; the layout's banner handler."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from app.jobs.lifecycle import record_adapter
from app.model_service import ProposalModels, tiny_model_folder
from app.settings import Settings
from app.store.adapters import AdapterNotFound, adapter_folder, delete_adapter, get_adapter, list_adapters
from app.store.projects import create_project
from app.studio import open_studio
from app.ui.layout import model_banner, refresh_banner
from app.ui.proposal_choices import BASE_CHOICE, adapter_folder_of_choice, proposal_model_choices
from sam3_lora.adapter_io import save_adapter
from sam3_lora.lora import LoraSettings, apply_lora
from sam3_lora.model import load_sam3
from sam3_lora.predict import predict


@pytest.fixture
def studio(tmp_path, tiny_model_dir):
    studio = open_studio(Settings(DATA_DIR=tmp_path / "data", SAM3_MODEL=str(tiny_model_dir)))
    yield studio
    studio.engine.dispose()


def trained_adapter(studio, tiny_model_dir, project_id: int, name: str) -> int:
    """A real PEFT folder under media/adapters/<name> with non-zero lora_B, recorded as a row."""
    model, _ = load_sam3(tiny_model_dir)
    peft_model = apply_lora(model, LoraSettings(components="decoder", rank=2, alpha=4))
    with torch.no_grad():
        for parameter_name, parameter in peft_model.named_parameters():
            if "lora_B" in parameter_name:
                parameter.fill_(0.05)
    save_adapter(peft_model, studio.media_dir / "adapters" / name)
    return record_adapter(studio.engine, project_id, None, name, f"adapters/{name}").id


def test_a_loadable_model_is_used_as_is_and_named_in_the_banner(studio, tiny_model_dir):
    assert model_banner(studio).startswith("Model: loading SAM3")
    text, timer = refresh_banner(studio)
    assert "loading" in text and timer.active  # nothing loaded yet: keep polling

    status = studio.models.status()
    assert status.source == str(tiny_model_dir) and not status.is_fallback
    text, timer = refresh_banner(studio)
    assert text == f"Model: SAM3 from `{tiny_model_dir}`" and timer.active is False


def test_unloadable_weights_fall_back_to_the_tiny_model_and_say_so(tmp_path):
    missing = tmp_path / "no-weights-here"
    studio = open_studio(Settings(DATA_DIR=tmp_path / "data", SAM3_MODEL=str(missing)))
    status = studio.models.status()
    assert status.is_fallback and status.source == str(tmp_path / "data" / "models" / "tiny-sam3")
    assert "Tiny random SAM3" in model_banner(studio) and "masks are noise" in model_banner(studio)
    assert str(missing) in model_banner(studio) and status.fallback_reason in model_banner(studio)
    model, tokenizer = studio.models.get(None)
    assert isinstance(predict(model, tokenizer, np.zeros((40, 50, 3), dtype=np.uint8), "thing",
                              score_threshold=0.0), list)


@pytest.mark.parametrize(("environment", "words"), [
    ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
    ({"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}, "no network: 127.0.0.1:9 did not answer"),
])
def test_offline_a_hub_model_falls_back_at_once_without_trying_the_hub(tmp_path, monkeypatch, environment, words):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    tried = []

    def load(source, adapter=None):
        tried.append(source)
        return object(), object()

    models = ProposalModels(Settings(DATA_DIR=tmp_path, SAM3_MODEL="facebook/sam3"), load=load)
    status = models.status()
    assert status.is_fallback and words in status.fallback_reason
    assert tried == [status.source], "the hub id was never handed to from_pretrained"


def test_the_tiny_folder_is_written_once(tmp_path):
    settings = Settings(DATA_DIR=tmp_path)
    folder = tiny_model_folder(settings)
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert tiny_model_folder(settings) == folder and (folder / "config.json").stat().st_mtime_ns == stamp


def test_a_failing_tiny_fallback_is_not_hidden(tmp_path):
    def load(source, adapter=None):
        raise RuntimeError(f"disk full while loading {source}")

    models = ProposalModels(Settings(DATA_DIR=tmp_path, SAM3_MODEL=str(tmp_path / "absent")), load=load)
    with pytest.raises(RuntimeError, match="disk full"):
        models.status()
    assert models.loaded_status() is None


def test_adapters_load_over_the_base_source_at_most_two_kept_and_forgettable(studio, tiny_model_dir):
    calls = []

    def load(source, adapter=None):
        calls.append((source, adapter))
        return (object(), object())

    models = ProposalModels(studio.settings, load=load, max_loaded=2)
    base = models.get(None)
    first, second = models.get("/adapters/a"), models.get("/adapters/b")
    assert models.get("/adapters/b") is second and len(calls) == 3
    assert calls == [(str(tiny_model_dir), None), (str(tiny_model_dir), "/adapters/a"), (str(tiny_model_dir), "/adapters/b")]
    assert models.get(None) is not base  # "a" and base left when "b" came; base reloads
    models.forget("/adapters/b")
    assert models.get("/adapters/b") is not second and first is not None


def test_proposal_choices_resolve_adapters_and_a_deleted_one_is_named(studio, tiny_model_dir):
    project_id = create_project(studio.engine, "Roads").id
    older = trained_adapter(studio, tiny_model_dir, project_id, "round-1")
    newer = trained_adapter(studio, tiny_model_dir, project_id, "round-2")
    assert proposal_model_choices(studio, project_id) == [
        ("Base SAM3", BASE_CHOICE), (f"Adapter round-2 (#{newer})", str(newer)), (f"Adapter round-1 (#{older})", str(older))]
    assert proposal_model_choices(studio, None) == [("Base SAM3", BASE_CHOICE)]
    assert adapter_folder_of_choice(studio, BASE_CHOICE) is None
    folder = adapter_folder_of_choice(studio, str(newer))
    assert folder == studio.media_dir / "adapters" / "round-2" and (folder / "adapter_config.json").is_file()

    model, tokenizer = studio.models.get(folder)
    assert any("lora_B" in name for name, _ in model.named_parameters())

    delete_adapter(studio.engine, studio.media_dir, newer)
    assert not folder.exists() and [a.id for a in list_adapters(studio.engine, project_id)] == [older]
    with pytest.raises(AdapterNotFound, match=f"adapter {newer} does not exist"):
        adapter_folder_of_choice(studio, str(newer))
    with pytest.raises(AdapterNotFound):
        delete_adapter(studio.engine, studio.media_dir, newer)


def test_deleting_an_adapter_whose_folder_is_gone_still_removes_the_row(studio, tiny_model_dir):
    project_id = create_project(studio.engine, "Roads").id
    adapter_id = trained_adapter(studio, tiny_model_dir, project_id, "gone")
    shutil.rmtree(adapter_folder(studio.media_dir, get_adapter(studio.engine, adapter_id)))
    assert delete_adapter(studio.engine, studio.media_dir, adapter_id).name == "gone"
    assert list_adapters(studio.engine, project_id) == []
