"""A job's adapter reaches the media store atomically (reliability.md: no half-written file
is visible): publish_adapter writes through sam3_lora.adapter_io.replace_folder_atomically,
like save_adapter, so re-publishing (a resumed or re-run job) never leaves a moment without
a whole adapter folder, and a failed publish leaves the earlier one as it was."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import json

import pytest
from huggingface_hub import ModelCard

from app.jobs.recipe import job_train_config, preset_recipe
from app.settings import Settings
from sam3_lora.adapter_io import CONFIG_FILE, WEIGHTS_FILE
from sam3_lora.train import TrainResult
from worker import run_job

JOB = SimpleNamespace(id=7)


def trained(tmp_path: Path, weights: bytes) -> TrainResult:
    run = tmp_path / f"run-{weights.hex()}"
    run.mkdir()
    (run / CONFIG_FILE).write_text("{}")
    (run / WEIGHTS_FILE).write_bytes(weights)
    return TrainResult(adapter_dir=run, steps=2, stopped=False,
                       history=[{"type": "step", "step": 1, "loss": 2.0}, {"type": "step", "step": 2, "loss": 1.0}])


@pytest.fixture
def publish(tmp_path):
    settings = Settings(DATA_DIR=tmp_path / "data")
    cfg = job_train_config(preset_recipe("Quick"), {"train_annotations": "a.json", "train_images": "images"},
                           "tiny", str(tmp_path / "out"))
    return lambda weights: run_job.publish_adapter(settings, JOB, cfg, trained(tmp_path, weights), partial=False)


def published(tmp_path: Path) -> Path:
    return tmp_path / "data" / "media" / "adapters" / f"job-{JOB.id}"


def test_a_republish_replaces_the_folder_and_a_whole_adapter_is_always_in_place(tmp_path, publish, monkeypatch):
    assert publish(b"first") == f"adapters/job-{JOB.id}"
    folder = published(tmp_path)
    assert {path.name for path in folder.iterdir()} == {CONFIG_FILE, WEIGHTS_FILE, "README.md", "loss_curve.png"}
    removals, real_rmtree = [], shutil.rmtree

    def rmtree_then_look(path, *args, **kwargs):  # every removal of the swap, then: is an adapter there?
        real_rmtree(path, *args, **kwargs)
        removals.append((Path(path).name, (folder / WEIGHTS_FILE).is_file()))

    monkeypatch.setattr(shutil, "rmtree", rmtree_then_look)
    publish(b"second")
    assert removals and all(whole for _, whole in removals), removals
    assert (folder / WEIGHTS_FILE).read_bytes() == b"second"
    assert [path.name for path in folder.parent.iterdir()] == [folder.name]  # no temp or backup sibling left


def test_a_failed_publish_leaves_the_earlier_adapter(tmp_path, publish, monkeypatch):
    publish(b"first")

    def card_fails(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(run_job, "write_model_card", card_fails)
    with pytest.raises(OSError, match="disk full"):
        publish(b"second")
    folder = published(tmp_path)
    assert (folder / WEIGHTS_FILE).read_bytes() == b"first" and (folder / "README.md").is_file()
    assert [path.name for path in folder.parent.iterdir()] == [folder.name]


@pytest.mark.parametrize("source, expected", [("/models/sam3", "facebook/sam3"), ("/data/models/tiny-sam3", None)])
def test_the_card_names_the_hub_id_of_the_studio_model_never_a_folder(tmp_path, source, expected):
    """SAM3_MODEL is a local copy of facebook/sam3 (SAM3_BASE_MODEL says so); a job that trained the
    tiny fallback instead (another source) has no Hub base model."""
    settings = Settings(DATA_DIR=tmp_path / "data", SAM3_MODEL="/models/sam3", SAM3_BASE_MODEL="facebook/sam3")
    cfg = job_train_config(preset_recipe("Quick"), {"train_annotations": "a.json", "train_images": "images"},
                           source, str(tmp_path / "out"))
    run_job.publish_adapter(settings, JOB, cfg, trained(tmp_path, b"w"), partial=False, project_name="Bridges")
    folder = published(tmp_path)
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == expected
    assert card.text.startswith(f"\n# SAM3 LoRA adapter of job {JOB.id} (Bridges)")
    recorded = json.loads((folder / CONFIG_FILE).read_text()).get("base_model_name_or_path")
    assert recorded == expected  # the trained() stand-in records none; a known base is written in
