"""The "Models" handlers on a real SQLite store with a real LoRA adapter of the tiny SAM3
(apply_lora + save_adapter), recorded as a finished job would record it."""
from __future__ import annotations

import tempfile
import zipfile

import pytest
from peft import PeftModel
from transformers import Sam3Model

from app.jobs.lifecycle import claim_job, create_job, finish_job, record_adapter
from app.settings import Settings
from app.store.adapters import adapter_folder, get_adapter
from app.store.projects import create_project
from app.studio import open_studio
from app.ui import models_handlers as handlers
from app.ui.messages import REFUSED
from app.ui.proposal_choices import BASE_CHOICE
from sam3_lora.adapter_io import CONFIG_FILE, WEIGHTS_FILE, save_adapter
from sam3_lora.lora import LoraSettings, apply_lora
from tests.jobs.conftest import write_metric_rows

SHOWN = {name: index for index, name in enumerate(["rows", "choice", "details", "curve", "download", "message", "pending"])}


@pytest.fixture
def studio(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # download zips stay in this test's folder
    (tmp_path / "tmp").mkdir()
    studio = open_studio(Settings(DATA_DIR=tmp_path / "data"))
    yield studio
    studio.engine.dispose()


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    return apply_lora(Sam3Model.from_pretrained(tiny_model_dir), LoraSettings(components="decoder", rank=4, alpha=8))


def trained_adapter(studio, project_id: int, lora_model, name: str = "") -> int:
    """A succeeded job with train/val loss rows and its adapter folder + row; returns the adapter id."""
    job = create_job(studio.engine, project_id, {"lora": {"rank": 4}}, [[1, 1]])
    claim_job(studio.engine, job.id, "w1")
    write_metric_rows(studio.engine, job.id, [
        {"step": 0, "split": "val", "name": "loss", "value": 3.0},
        {"step": 1, "name": "loss", "value": 2.5}, {"step": 2, "name": "loss", "value": 2.0},
        {"step": 2, "name": "loss_dice", "value": 0.4}, {"step": 2, "name": "lr", "value": 1e-4},
        {"step": 2, "split": "val", "name": "loss", "value": 2.2},
    ])
    relative = f"adapters/job-{job.id}"
    save_adapter(lora_model, studio.media_dir / relative)
    (studio.media_dir / relative / "README.md").write_text(f"# SAM3 LoRA adapter of job {job.id}\n")
    adapter = record_adapter(studio.engine, project_id, job.id, name or f"job-{job.id}", relative,
                             base_model="tiny", metrics={"steps": 2, "eval_before": {"segm_mAP": 0.1, "bbox_mAP": 0.2},
                                                         "eval_after": {"segm_mAP": 0.3, "bbox_mAP": None},
                                                         "dataset": {"train": {"images": 8, "instances": 12}}})
    finish_job(studio.engine, job.id, "succeeded")
    return adapter.id


@pytest.fixture
def project_id(studio):
    return create_project(studio.engine, "Shapes").id


def test_the_list_shows_adapters_with_map_before_and_after_and_the_job_curve(studio, project_id, lora_model):
    first = trained_adapter(studio, project_id, lora_model)
    newest = trained_adapter(studio, project_id, lora_model)
    shown = handlers.show_models(studio, project_id)
    rows = shown[SHOWN["rows"]]
    assert [row[0] for row in rows] == [newest, first]
    assert rows[0][4:] == ["tiny", "0.1000 → 0.3000", "0.2000 → -"]
    assert shown[SHOWN["choice"]]["value"] == newest  # the newest is shown
    details = shown[SHOWN["details"]]
    assert "trained on 8 images, 12 instances" in details and "| segm | 0.1000 | 0.3000 |" in details
    curve = shown[SHOWN["curve"]].dropna()
    assert set(curve["series"]) == {"total", "total val", "dice"}
    assert curve[curve.series == "total val"]["step"].tolist() == [0, 2]

    picked = handlers.pick_adapter(studio, project_id, first)
    assert f"(#{first})" in picked[0]
    assert handlers.show_models(studio, project_id, selected=first)[SHOWN["choice"]]["value"] == first
    other_project = create_project(studio.engine, "Other").id
    assert handlers.adapter_rows(studio, other_project) == []
    refused = handlers.pick_adapter(studio, other_project, first)
    assert refused[3].startswith(REFUSED) and "not in this project" in refused[3]


def test_the_download_zip_is_a_peft_folder_that_loads(studio, project_id, lora_model, tiny_model_dir, tmp_path):
    adapter_id = trained_adapter(studio, project_id, lora_model, name="cracks v1")
    download = handlers.pick_adapter(studio, project_id, adapter_id)[2]
    assert download["interactive"] is True
    archive = download["value"]
    assert archive.startswith(str(tmp_path / "tmp")) and archive.endswith("sam3-lora-cracks-v1.zip")
    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == [f"sam3-lora-cracks-v1/{name}" for name in
                                             sorted([CONFIG_FILE, WEIGHTS_FILE, "README.md"])]
        opened.extractall(tmp_path / "unzipped")
    model = PeftModel.from_pretrained(Sam3Model.from_pretrained(tiny_model_dir), tmp_path / "unzipped" / "sam3-lora-cracks-v1")
    assert any("lora_A" in name for name, _ in model.named_parameters())
    assert handlers.pick_adapter(studio, project_id, adapter_id)[2]["value"] == archive  # made once


def test_use_for_proposals_sets_the_annotate_dropdown(studio, project_id, lora_model):
    adapter_id = trained_adapter(studio, project_id, lora_model)
    dropdown, message = handlers.use_for_proposals(studio, project_id, adapter_id)
    assert dropdown.value == str(adapter_id)
    assert [value for _, value in dropdown.choices] == [BASE_CHOICE, str(adapter_id)]
    assert "job-" in message
    update, refused = handlers.use_for_proposals(studio, project_id, None)
    assert update == {"__type__": "update"} and refused.startswith(REFUSED)


def test_delete_asks_first_then_removes_the_row_and_the_folder(studio, project_id, lora_model):
    keep = trained_adapter(studio, project_id, lora_model)
    doomed = trained_adapter(studio, project_id, lora_model)
    folder = adapter_folder(studio.media_dir, get_adapter(studio.engine, doomed))
    studio.models._loaded[str(folder)] = ("model", "tokenizer")  # as if Annotate had proposed with it

    armed = handlers.delete_adapter_twice(studio, project_id, doomed, None, str(doomed))
    assert "Click **Delete** again" in armed[5] and armed[6] == doomed
    assert folder.is_dir() and handlers.adapter_rows(studio, project_id)[0][0] == doomed

    done = handlers.delete_adapter_twice(studio, project_id, doomed, armed[6], str(doomed))
    assert "Deleted adapter" in done[5] and done[6] is None
    assert not folder.exists() and [row[0] for row in done[0]] == [keep]
    assert str(folder) not in studio.models._loaded
    assert done[7].value == BASE_CHOICE and [v for _, v in done[7].choices] == [BASE_CHOICE, str(keep)]
    again = handlers.delete_adapter_twice(studio, project_id, doomed, doomed, BASE_CHOICE)
    assert again[5].startswith(REFUSED) and "does not exist" in again[5]
