"""`sam3-lora predict --folder / --coco` on the tiny SAM3: one COCO file of scored proposals."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from sam3_lora.cli import main
from sam3_lora.predict import load_predictor, predict_many
from sam3_lora.predict_batch import propose_batch
from sam3_lora.synthetic import write_synthetic_coco


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return write_synthetic_coco(folder, num_images=5, image_size=112, concepts=("circle", "square"), seed=2)


def test_predict_over_a_folder_writes_a_coco_of_scored_proposals(tiny_model_dir, dataset, tmp_path, capsys):
    out = tmp_path / "p" / "proposals.json"
    assert main(["predict", "--folder", str(dataset.parent / "images"), "--prompt", "circle", "--prompt", "square",
                 "--model", str(tiny_model_dir), "--threshold", "0", "--batch", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    written = json.loads(out.read_text())
    assert [c["name"] for c in written["categories"]] == ["circle", "square"]
    assert [i["file_name"] for i in written["images"]] == [f"{n:06d}.png" for n in range(1, 6)]
    assert f"{len(written['annotations'])} proposals on 5 images" in captured.out
    assert "5/5" in captured.err  # the progress bar, on stderr
    coco = COCO(str(out))
    results = coco.loadRes(written["annotations"])
    assert len(results.getAnnIds()) == len(written["annotations"]) > 0
    assert all(0 <= a["score"] <= 1 and a["segmentation"]["size"] == [112, 112] for a in written["annotations"])


def test_predict_over_a_coco_file_keeps_its_ids_and_categories(tiny_model_dir, dataset, tmp_path, capsys):
    assert main(["predict", "--coco", str(dataset), "--images", str(dataset.parent / "images"), "--quiet",
                 "--model", str(tiny_model_dir), "--threshold", "0", "--out", str(tmp_path / "o")]) == 0
    written = json.loads((tmp_path / "o" / "proposals.json").read_text())
    source = json.loads(dataset.read_text())
    assert written["categories"] == [{"id": c["id"], "name": c["name"]} for c in source["categories"]]
    assert [i["id"] for i in written["images"]] == [i["id"] for i in source["images"]]
    assert {a["category_id"] for a in written["annotations"]} <= {c["id"] for c in source["categories"]}


def test_predict_refusals_are_one_line_and_exit_2(tiny_model_dir, dataset, tmp_path, capsys):
    assert main(["predict", "--folder", str(tmp_path / "none"), "--prompt", "x", "--model", str(tiny_model_dir)]) == 2
    assert "none not found" in capsys.readouterr().err
    assert main(["predict", "--folder", str(dataset.parent / "images"), "--model", str(tiny_model_dir)]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert main(["predict", "--coco", str(dataset), "--model", str(tiny_model_dir)]) == 2
    assert "--images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--image", "a.png", "--folder", "b", "--prompt", "x"])


def test_help_names_the_folder_and_coco_modes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--folder" in text and "--coco" in text and "proposals.json" in text


def test_a_batch_of_images_gives_what_one_image_at_a_time_gives(tiny_model_dir):
    model, tokenizer = load_predictor(tiny_model_dir)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8), rng.integers(0, 255, (90, 130, 3), dtype=np.uint8)]
    batched = propose_batch(model, tokenizer, images, ["circle", "square"], score_threshold=0.0)
    for image, result in zip(images, batched):
        alone = predict_many(model, tokenizer, image, ["circle", "square"], score_threshold=0.0)
        for got, want in zip(result.instances, alone):
            assert [round(i.score, 5) for i in got] == [round(i.score, 5) for i in want]
            assert all((a.mask == b.mask).all() for a, b in zip(got, want))
        assert all(0.0 <= p <= 1.0 for p in result.presence) and len(result.presence) == 2
