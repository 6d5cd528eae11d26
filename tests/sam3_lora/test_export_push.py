"""`sam3-lora export --merge` and `sam3-lora push` on the tiny SAM3: the merged folder is a full
Sam3Model that predicts as base + adapter does; a push goes through the real huggingface_hub
client to a local stand-in of the Hub (tests/hub_stub.py) and sends exactly the checked folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoTokenizer, Sam3Model

from sam3_lora.adapter_io import save_adapter
from sam3_lora.cli import main
from sam3_lora.model_card import ModelCardFacts, write_model_card
from sam3_lora.predict import load_predictor, predict
from sam3_lora.synthetic import write_synthetic_coco
from tests.hub_stub import start_hub_stub
from tests.tuned_lora import tuned_lora

HUB_BASE = "test-org/tiny-sam3"  # the Hub id the tiny folder stands for in these tests


@pytest.fixture(scope="module")
def base_folder(tiny_model_dir, tmp_path_factory):
    """The tiny SAM3 with the extra files a Hub SAM3 ships (processor config, licence)."""
    folder = tmp_path_factory.mktemp("base") / "sam3"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "Sam3Processor"}))
    (folder / "LICENSE").write_text("SAM License (stand-in)\n")
    return folder


@pytest.fixture(scope="module")
def adapter(base_folder, tmp_path_factory):
    """A LoRA adapter with non-zero B (so it changes the model) and a model card naming HUB_BASE."""
    folder = save_adapter(tuned_lora(base_folder, seed=7), tmp_path_factory.mktemp("adapter") / "adapter")
    write_model_card(folder, ModelCardFacts(title="shapes", base_model=HUB_BASE, config={"lora": {"rank": 4}},
                                            dataset_name="shapes", status="complete: 4 steps",
                                            history=[{"type": "step", "step": 1, "loss": 1.0}]))
    return folder


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    annotations = write_synthetic_coco(tmp_path_factory.mktemp("img"), num_images=1, image_size=112, seed=9)
    return Image.open(annotations.parent / "images" / "000001.png").convert("RGB")


def test_export_merge_writes_a_sam3_that_predicts_as_base_plus_adapter(adapter, base_folder, image, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["export", "--merge", "--adapter", str(adapter), "--out", str(out), "--model", str(base_folder)]) == 0
    assert f"merged model: {out}" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
            "LICENSE", "README.md", "loss_curve.png"} <= {path.name for path in out.iterdir()}
    merged = Sam3Model.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert AutoTokenizer.from_pretrained(out)("circle")["input_ids"] == AutoTokenizer.from_pretrained(base_folder)(
        "circle")["input_ids"]
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.base_model == HUB_BASE

    with_adapter, tokenizer = load_predictor(base_folder, adapter=adapter)
    expected = predict(with_adapter, tokenizer, image, "circle", score_threshold=0.0)
    base, _ = load_predictor(base_folder)
    merged_model, merged_tokenizer = load_predictor(out)
    found = predict(merged_model, merged_tokenizer, image, "circle", score_threshold=0.0)
    assert len(found) == len(expected) > 0
    for mine, theirs in zip(found, expected):
        assert mine.score == pytest.approx(theirs.score, abs=1e-4) and (mine.mask == theirs.mask).mean() > 0.999
    unmerged = predict(base, tokenizer, image, "circle", score_threshold=0.0)
    assert [round(i.score, 3) for i in unmerged] != [round(i.score, 3) for i in expected]  # the adapter matters


def test_export_without_merge_and_of_a_missing_adapter_exit_2(tmp_path, capsys):
    assert main(["export", "--adapter", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "only --merge" in capsys.readouterr().err
    assert main(["export", "--merge", "--adapter", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.fixture
def hub():
    stub, server = start_hub_stub()
    yield stub
    server.shutdown()


def push(folder, hub, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test", "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, "-m", "sam3_lora.cli", "push", str(folder), *extra], env=env,
                          capture_output=True, text=True, timeout=120)


def test_push_uploads_the_checked_adapter_folder_with_the_token(adapter, hub):
    done = push(adapter, hub, "--repo-id", "me/sam3-lora-shapes")
    assert done.returncode == 0, done.stderr
    assert f"pushed {adapter} to me/sam3-lora-shapes: {hub.url}/me/sam3-lora-shapes/commit/" in done.stdout
    assert hub.created == [{"name": "sam3-lora-shapes", "organization": "me", "visibility": "private"}]
    assert set(hub.authorizations) == {"Bearer hf_test"}
    assert hub.uploaded("me/sam3-lora-shapes") == {path.name: path.read_bytes() for path in adapter.iterdir()}
    pushed_config = json.loads(hub.uploaded("me/sam3-lora-shapes")["adapter_config.json"])
    assert pushed_config["base_model_name_or_path"] == HUB_BASE  # not the local folder PEFT recorded
    assert ModelCard(hub.validated[0]).data.library_name == "peft"


def test_push_refuses_a_folder_the_hub_could_not_use_before_sending_anything(adapter, hub, tmp_path):
    local = tmp_path / "local-base"
    shutil.copytree(adapter, local)
    write_model_card(local, ModelCardFacts(title="t", base_model=None, config={}, dataset_name="d", status="s"))
    done = push(local, hub, "--repo-id", "me/x")
    assert done.returncode == 2 and "base_model is None, not a Hub id" in done.stderr and "Traceback" not in done.stderr
    (local / "adapter_model.safetensors").unlink()
    write_model_card(local, ModelCardFacts(title="t", base_model=HUB_BASE, config={}, dataset_name="d", status="s"))
    assert "adapter_model.safetensors" in push(local, hub, "--repo-id", "me/x").stderr
    assert push(adapter, hub, "--repo-id", "not a repo").returncode == 2
    assert hub.authorizations == []  # nothing reached the Hub
    hub.tokens = {"hf_other"}
    refused = push(adapter, hub, "--repo-id", "me/x")
    assert refused.returncode == 1 and "the upload failed" in refused.stderr and "401" in refused.stderr
