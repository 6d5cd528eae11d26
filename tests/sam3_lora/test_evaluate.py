"""evaluate(): COCO segm / bbox mAP through pycocotools' COCOeval, with answers known exactly.

An oracle replaces `predict_many` (the model call) and returns the ground truth as
Instances, whole or corrupted, so everything after the model is checked against
known values: RLE encoding, xyxy -> xywh boxes, image and category ids, per-concept
AP. The last test runs the real tiny SAM3 end to end.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import sam3_lora.evaluate as evaluate_module
from sam3_lora.coco import load_coco
from sam3_lora.evaluate import evaluate
from sam3_lora.model import load_sam3
from sam3_lora.predict import Instance
from sam3_lora.synthetic import write_synthetic_coco


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_coco(tmp_path_factory.mktemp("eval-data"), num_images=8, image_size=112,
                                concepts=("circle", "square"), seed=5)


def ground_truth_instances(coco, image_id: int, phrase: str) -> list[Instance]:
    """The annotations of `phrase` in the image, as perfect Instances (score 1, box xyxy from the COCO xywh)."""
    category_id = coco.getCatIds(catNms=[phrase])[0]
    instances = []
    for annotation in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], catIds=[category_id])):
        x, y, w, h = annotation["bbox"]
        mask = mask_utils.decode(coco.annToRLE(annotation)).astype(bool)
        instances.append(Instance(mask=mask, box=(x, y, x + w, y + h), score=1.0, phrase=phrase))
    return instances


def install_oracle(monkeypatch, coco, image_dir: Path, answer) -> None:
    """predict_many -> answer(image_id, phrase) per prompt; the image is recognised by its pixels."""
    ids_by_pixels = {np.asarray(Image.open(image_dir / info["file_name"]).convert("RGB")).tobytes(): image_id
                     for image_id, info in coco.imgs.items()}

    def oracle(model, tokenizer, image, prompts, score_threshold, nms, cache):
        assert score_threshold == 0.0 and nms is None  # COCOeval must see every query, unfiltered
        image_id = ids_by_pixels[np.asarray(image).tobytes()]
        return [answer(image_id, phrase) for phrase in prompts]

    monkeypatch.setattr(evaluate_module, "predict_many", oracle)


def test_perfect_detections_score_one(dataset, monkeypatch):
    coco, image_dir = load_coco(dataset), dataset.parent / "images"
    install_oracle(monkeypatch, coco, image_dir,
                   lambda image_id, phrase: ground_truth_instances(coco, image_id, phrase))
    progress = []
    result = evaluate(None, None, coco, image_dir, on_image=lambda done, total: progress.append((done, total)))
    assert (result.segm_mAP, result.segm_mAP50, result.bbox_mAP, result.bbox_mAP50) == (1.0, 1.0, 1.0, 1.0)
    assert result.per_concept == {"circle": {"segm_AP": 1.0, "bbox_AP": 1.0},
                                  "square": {"segm_AP": 1.0, "bbox_AP": 1.0}}
    assert result.images == 8 and progress == [(done, 8) for done in range(1, 9)]


def test_answers_for_the_wrong_concept_score_zero(dataset, monkeypatch):
    coco, image_dir = load_coco(dataset), dataset.parent / "images"
    other = {"circle": "square", "square": "circle"}
    # The right masks, reported under the other phrase: every detection is a false positive.
    install_oracle(monkeypatch, coco, image_dir, lambda image_id, phrase: [
        Instance(i.mask, i.box, i.score, phrase) for i in ground_truth_instances(coco, image_id, other[phrase])])
    result = evaluate(None, None, coco, image_dir)
    assert result.segm_mAP == result.bbox_mAP == 0.0
    assert all(ap == {"segm_AP": 0.0, "bbox_AP": 0.0} for ap in result.per_concept.values())


def test_a_box_off_by_its_own_size_fails_bbox_but_not_segm(dataset, monkeypatch):
    coco, image_dir = load_coco(dataset), dataset.parent / "images"

    def shifted_boxes(image_id, phrase):
        return [Instance(i.mask, (i.box[2], i.box[3], 2 * i.box[2] - i.box[0], 2 * i.box[3] - i.box[1]), 1.0, phrase)
                for i in ground_truth_instances(coco, image_id, phrase)]

    install_oracle(monkeypatch, coco, image_dir, shifted_boxes)
    result = evaluate(None, None, coco, image_dir)
    assert result.segm_mAP == 1.0 and result.bbox_mAP == 0.0


def test_finding_half_the_objects_gives_about_half_the_ap(dataset, monkeypatch):
    coco, image_dir = load_coco(dataset), dataset.parent / "images"
    circle = coco.getCatIds(catNms=["circle"])[0]
    annotations = coco.loadAnns(coco.getAnnIds(catIds=[circle]))
    kept = {a["id"] for a in annotations[: len(annotations) // 2]}

    def half_the_circles(image_id, phrase):
        found = ground_truth_instances(coco, image_id, phrase)
        if phrase != "circle":
            return found
        ids = [a["id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], catIds=[circle]))]
        return [instance for instance, ann_id in zip(found, ids) if ann_id in kept]

    install_oracle(monkeypatch, coco, image_dir, half_the_circles)
    result = evaluate(None, None, coco, image_dir)
    recall = len(kept) / len(annotations)
    # Precision 1 up to recall r, 0 beyond: AP = share of COCO's 101 recall points <= r.
    expected = (np.floor(recall * 100 + 1e-9) + 1) / 101
    assert result.per_concept["circle"]["segm_AP"] == pytest.approx(expected, abs=1e-6)
    assert result.per_concept["square"]["segm_AP"] == 1.0
    assert result.segm_mAP == pytest.approx((expected + 1.0) / 2, abs=1e-6)


def test_no_detections_score_zero_and_no_images_is_an_error(dataset, monkeypatch):
    coco, image_dir = load_coco(dataset), dataset.parent / "images"
    install_oracle(monkeypatch, coco, image_dir, lambda image_id, phrase: [])
    result = evaluate(None, None, coco, image_dir)
    assert (result.segm_mAP, result.bbox_mAP, result.images) == (0.0, 0.0, 8)
    with pytest.raises(ValueError, match="at least one image"):
        evaluate(None, None, coco, image_dir, image_ids=[])


def test_the_tiny_sam3_evaluates_end_to_end(tiny_model_dir, dataset):
    model, tokenizer = load_sam3(tiny_model_dir)
    coco = load_coco(dataset)
    image_ids = sorted(coco.getImgIds())[:3]
    result = evaluate(model, tokenizer, coco, dataset.parent / "images", image_ids).to_dict()
    assert result["images"] == 3 and set(result["per_concept"]) == {"circle", "square"}
    for key in ("segm_mAP", "segm_mAP50", "bbox_mAP", "bbox_mAP50"):
        assert 0.0 <= result[key] <= 1.0
    # Every query of every concept is a detection: Q per (image, concept), scores in [0, 1].
    detections = evaluate_module.detections_for_image(model, tokenizer, Image.open(dataset.parent / "images" /
                                                      coco.imgs[image_ids[0]]["file_name"]).convert("RGB"),
                                                      image_ids[0], {1: "circle", 2: "square"})
    num_queries = model.config.detr_decoder_config.num_queries
    assert len(detections) == 2 * num_queries
    assert {d["category_id"] for d in detections} == {1, 2} and all(0 <= d["score"] <= 1 for d in detections)
    assert all(d["bbox"][2] >= 0 and d["bbox"][3] >= 0 for d in detections)  # xywh
