"""sam3_lora.model_card and sam3_lora.hub_ids: the card the Hub reads (ModelCard.load parses its
metadata), its body from the run's own numbers, and a base model that is never a local path."""
from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from sam3_lora.config import ConfigError, TrainConfig
from sam3_lora.hub_ids import base_model_id, is_hub_id
from sam3_lora.model_card import ModelCardFacts, merged_card_text, write_model_card

HISTORY = [{"type": "eval", "step": 0, "loss": 3.0, "loss_ce": 1.0},
           {"type": "step", "step": 1, "loss": 2.5, "loss_ce": 0.9}, {"type": "step", "step": 2, "loss": 2.0, "loss_ce": 0.7},
           {"type": "eval", "step": 2, "loss": 2.2, "loss_ce": 0.8}]
DATASET = {"train": {"images": 8, "images_without_instances": 1, "instances": 12, "positive_queries": 9,
                     "negative_queries": 8, "instances_per_concept": {"crack": 9, "rust | stain": 3}},
           "val": {"images": 2, "images_without_instances": 0, "instances": 3, "positive_queries": 2,
                   "negative_queries": 2, "instances_per_concept": {"crack": 3}},
           "warnings": ["concept 'rust | stain' has few examples"]}
BEFORE = {"segm_mAP": 0.1, "segm_mAP50": 0.2, "bbox_mAP": 0.15, "bbox_mAP50": 0.3,
          "per_concept": {"crack": {"segm_AP": 0.1, "bbox_AP": 0.2}, "rust | stain": {"segm_AP": 0.0, "bbox_AP": 0.0}}}
AFTER = {"segm_mAP": 0.4, "segm_mAP50": 0.6, "bbox_mAP": 0.45, "bbox_mAP50": 0.7,
         "per_concept": {"crack": {"segm_AP": 0.5, "bbox_AP": 0.55}, "rust | stain": {"segm_AP": 0.3, "bbox_AP": 0.35}}}


def facts(base_model: str | None = "facebook/sam3", **changes) -> ModelCardFacts:
    values = dict(title="SAM3 LoRA adapter of job 3 (Bridges)", base_model=base_model,
                  config={"model": {"source": "/models/sam3"}, "lora": {"rank": 8}}, dataset_name="Bridges",
                  status="complete: 2 steps", history=HISTORY, dataset=DATASET, eval_before=BEFORE, eval_after=AFTER)
    return ModelCardFacts(**{**values, **changes})


@pytest.fixture
def adapter_folder(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/sam3", "r": 8}))
    return folder


def test_the_card_metadata_is_what_the_hub_reads(adapter_folder):
    card = ModelCard.load(write_model_card(adapter_folder, facts()))
    data = card.data
    assert data.library_name == "peft" and data.base_model == "facebook/sam3"
    assert (data.license, data.license_name) == ("other", "sam-license") and "facebook/sam3" in data.license_link
    assert {"sam3", "lora", "base_model:adapter:facebook/sam3"} <= set(data.tags)
    results = {result.metric_name: result.metric_value for result in data.eval_results}
    assert results == {"segm mAP (COCO)": 0.4, "segm mAP50 (COCO)": 0.6, "bbox mAP (COCO)": 0.45,
                       "bbox mAP50 (COCO)": 0.7}
    assert {result.dataset_name for result in data.eval_results} == {"Bridges"}
    # PEFT wrote the local folder it loaded; the Hub (and AutoPeftModel elsewhere) need the id
    assert json.loads((adapter_folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "facebook/sam3"


def test_the_body_is_built_from_the_run(adapter_folder):
    text = ModelCard.load(write_model_card(adapter_folder, facts())).text
    assert "Status: complete: 2 steps" in text and "`facebook/sam3`" in text
    assert "| after | 0.4000 | 0.6000 | 0.4500 | 0.7000 |" in text
    assert "| crack | 0.1000 → 0.5000 | 0.2000 → 0.5500 |" in text
    assert "| rust \\| stain | 0.0000 → 0.3000 |" in text  # a '|' in a concept name cannot break the table
    assert "| train | 8 | 1 | 12 | 9 | 8 |" in text and "| crack | 9 | 3 |" in text
    assert "- warning: concept 'rust \\| stain' has few examples" in text
    assert "![loss curve](loss_curve.png)" in text and "rank: 8" in text
    with Image.open(adapter_folder / "loss_curve.png") as curve:
        assert curve.size == (640, 360)


def test_weights_not_from_the_hub_get_no_base_model_and_the_config_keeps_its_path(adapter_folder):
    card = ModelCard.load(write_model_card(adapter_folder, facts(base_model=None, eval_before=None, eval_after=None)))
    assert card.data.base_model is None and card.data.eval_results is None
    assert not any(tag.startswith("base_model:") for tag in card.data.tags)
    assert "not on the Hub" in card.text and "Not measured" in card.text
    assert json.loads((adapter_folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "/models/sam3"


def test_a_merged_card_is_a_transformers_card_of_the_same_run(adapter_folder):
    adapter_card = write_model_card(adapter_folder, facts()).read_text()
    merged = ModelCard(merged_card_text(adapter_card, "facebook/sam3", title="merged"))
    assert merged.data.library_name == "transformers" and merged.data.base_model == "facebook/sam3"
    assert "merged-lora" in merged.data.tags and not any(t.startswith("base_model:adapter:") for t in merged.data.tags)
    assert "Sam3Model.from_pretrained(\"<this repo or folder>\")" in merged.text and "PeftModel" not in merged.text
    assert "| crack | 0.1000 → 0.5000 |" in merged.text
    stub = ModelCard(merged_card_text("# peft's stub\n[More Information Needed]\n", "facebook/sam3", title="m"))
    assert stub.data.library_name == "transformers" and stub.data.base_model == "facebook/sam3"


@pytest.mark.parametrize("source, declared, expected", [
    ("facebook/sam3", None, "facebook/sam3"),
    ("/models/sam3", None, None),
    ("/models/sam3", "facebook/sam3", "facebook/sam3"),
    ("/home/me/.cache/huggingface/hub/models--facebook--sam3/snapshots/0123abc", None, "facebook/sam3"),
    ("./tiny", None, None),
])
def test_the_base_model_is_a_hub_id_or_nothing(source, declared, expected):
    assert base_model_id(source, declared) == expected


def test_a_local_folder_named_like_a_hub_id_is_not_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    assert is_hub_id("models/tiny") and base_model_id("models/tiny") is None


def test_model_base_model_must_be_a_hub_id():
    data = {"train_annotations": "a.json", "train_images": "images"}
    assert TrainConfig.from_dict({"model": {"source": "/m", "base_model": "facebook/sam3"}, "data": data,
                                  "schedule": {"max_steps": 1}}).model.base_model == "facebook/sam3"
    with pytest.raises(ConfigError, match="model.base_model: must be a Hub id"):
        TrainConfig.from_dict({"model": {"source": "/m", "base_model": "/models/sam3"}, "data": data,
                               "schedule": {"max_steps": 1}})


def test_review_outcomes_of_earlier_models_are_a_table_only_when_given(adapter_folder):
    outcomes = {"base SAM3": {"crack": {"accepted": 1, "edited": 2, "rejected": 1}},
                "adapter job-2 (#2)": {"crack": {"accepted": 6, "edited": 1, "rejected": 1}}}
    text = ModelCard.load(write_model_card(adapter_folder, facts(review_outcomes=outcomes))).text
    assert "## Proposals reviewed while labelling" in text
    assert "| base SAM3 | crack | 1 | 2 | 1 | 25% |" in text
    assert "| adapter job-2 (#2) | crack | 6 | 1 | 1 | 75% |" in text
    assert "Proposals reviewed" not in ModelCard.load(write_model_card(adapter_folder, facts())).text
