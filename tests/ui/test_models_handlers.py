"""The "Models" handlers on a real SQLite store with a real LoRA adapter of the tiny SAM3
(apply_lora + save_adapter), recorded as a finished job would record it. Pushes go through the
real huggingface_hub client to a local stand-in of the Hub (tests/hub_stub.py)."""
from __future__ import annotations

import tempfile
import zipfile

import huggingface_hub.constants
import pytest
import torch
from huggingface_hub import ModelCard
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
from sam3_lora.model_card import ModelCardFacts, write_model_card
from tests.hub_stub import start_hub_stub
from tests.jobs.conftest import write_metric_rows
from tests.tuned_lora import tuned_lora

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


def trained_adapter(studio, project_id: int, lora_model, name: str = "", base_model: str = "tiny") -> int:
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
                             base_model=base_model, metrics={"steps": 2, "eval_before": {"segm_mAP": 0.1, "bbox_mAP": 0.2},
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


@pytest.fixture(scope="module")
def tuned_lora_model(tiny_model_dir):
    """A LoRA model whose B matrices are not zero, so merging it changes the weights."""
    return tuned_lora(tiny_model_dir, seed=4)


def sam3_outputs(model) -> dict:
    torch.manual_seed(0)
    pixels = torch.rand(1, 3, 112, 112)
    ids = torch.tensor([[0, 70, 75, 80, 1] + [1] * 27])  # start, three bytes, end; padded to 32
    with torch.no_grad():
        out = model(pixel_values=pixels, input_ids=ids, attention_mask=torch.tensor([[1] * 5 + [0] * 27]))
    return {name: out[name] for name in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits")}


def test_merge_into_sam3_offers_a_full_model_that_predicts_as_base_plus_adapter(studio, project_id, tuned_lora_model,
                                                                                tiny_model_dir, tmp_path):
    adapter_id = trained_adapter(studio, project_id, tuned_lora_model, name="cracks v1", base_model=str(tiny_model_dir))
    download, message = handlers.merged_model_zip(studio, project_id, adapter_id)
    assert download["interactive"] is True and "Merged **cracks v1**" in message
    archive = download["value"]
    assert archive.startswith(str(tmp_path / "tmp")) and archive.endswith("sam3-lora-cracks-v1-merged.zip")
    with zipfile.ZipFile(archive) as opened:
        names = {name.split("/", 1)[1] for name in opened.namelist()}
        opened.extractall(tmp_path / "unzipped")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    merged = Sam3Model.from_pretrained(tmp_path / "unzipped" / "sam3-lora-cracks-v1-merged").eval()
    folder = adapter_folder(studio.media_dir, get_adapter(studio.engine, adapter_id))
    with_adapter = PeftModel.from_pretrained(Sam3Model.from_pretrained(tiny_model_dir), folder).eval()
    base = sam3_outputs(Sam3Model.from_pretrained(tiny_model_dir).eval())
    for name, value in sam3_outputs(with_adapter).items():
        assert torch.allclose(sam3_outputs(merged)[name], value, atol=1e-4), name
        assert not torch.allclose(base[name], value, atol=1e-4) or name == "presence_logits"
    assert handlers.merged_model_zip(studio, project_id, adapter_id)[0]["value"] == archive  # made once
    refused = handlers.merged_model_zip(studio, project_id, None)
    assert refused[0]["interactive"] is False and refused[1].startswith(REFUSED)


@pytest.fixture
def hub(monkeypatch):
    stub, server = start_hub_stub()
    stub.tokens = {"hf_good"}
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", stub.url)
    yield stub
    server.shutdown()


def test_push_uploads_the_adapter_folder_with_the_users_token(studio, project_id, lora_model, hub):
    adapter_id = trained_adapter(studio, project_id, lora_model, name="cracks v1")
    folder = adapter_folder(studio.media_dir, get_adapter(studio.engine, adapter_id))
    write_model_card(folder, ModelCardFacts(title="cracks v1", base_model="test-org/tiny-sam3", config={},
                                            dataset_name="Shapes", status="complete: 2 steps"))
    message = handlers.push_adapter(studio, project_id, adapter_id, " me/sam3-lora-cracks ", "hf_good", True)
    assert message.startswith("Pushed **cracks v1** to `me/sam3-lora-cracks`") and "/commit/" in message
    assert hub.created == [{"name": "sam3-lora-cracks", "organization": "me", "visibility": "private"}]
    uploaded = hub.uploaded("me/sam3-lora-cracks")
    assert uploaded == {path.name: path.read_bytes() for path in folder.iterdir()}
    assert set(hub.authorizations) == {"Bearer hf_good"}
    assert ModelCard(hub.validated[0]).data.base_model == "test-org/tiny-sam3"


def test_push_refusals_name_the_reason(studio, project_id, lora_model, hub):
    adapter_id = trained_adapter(studio, project_id, lora_model)  # its README has no metadata
    no_card = handlers.push_adapter(studio, project_id, adapter_id, "me/x", "hf_good", True)
    assert no_card.startswith(REFUSED) and "metadata" in no_card
    folder = adapter_folder(studio.media_dir, get_adapter(studio.engine, adapter_id))
    write_model_card(folder, ModelCardFacts(title="t", base_model=None, config={}, dataset_name="d", status="s"))
    no_base = handlers.push_adapter(studio, project_id, adapter_id, "me/x", "hf_good", True)
    assert no_base.startswith(REFUSED) and "base\\_model is None, not a Hub id" in no_base
    write_model_card(folder, ModelCardFacts(title="t", base_model="test-org/tiny-sam3", config={}, dataset_name="d",
                                            status="s"))
    bad_name = handlers.push_adapter(studio, project_id, adapter_id, "../x", "hf_good", True)
    assert bad_name.startswith(REFUSED) and "not a Hub id" in bad_name
    bad_token = handlers.push_adapter(studio, project_id, adapter_id, "me/x", "hf_wrong", True)
    assert bad_token.startswith(REFUSED) and "the Hub refused the upload" in bad_token and "401" in bad_token
    assert hub.commits == []
