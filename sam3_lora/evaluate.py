"""COCO mAP of a SAM3 (with or without adapter) on a COCO split, with pycocotools' COCOeval.

For each image, every category name is asked as a text prompt (one backbone pass,
`predict_many`); every query is kept as a detection with score
sigmoid(logit) * sigmoid(presence) (no threshold, no NMS: COCOeval ranks by score
and keeps the top 100 per image). Masks are compared at the original image size.
segm_mAP / bbox_mAP = COCOeval stats[0] (AP at IoU .50:.95, area all, 100 dets);
*_mAP50 = stats[1]. Per concept: precision[T, R, k, area all, 100 dets] averaged
over the valid (> -1) entries.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam3_lora.predict import BackboneCache, predict_many

MAX_DETECTIONS = 100


@dataclass
class EvalResult:
    """mAP numbers of one model on one split; plain types."""

    segm_mAP: float
    segm_mAP50: float
    bbox_mAP: float
    bbox_mAP50: float
    images: int
    per_concept: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "segm_mAP": self.segm_mAP, "segm_mAP50": self.segm_mAP50, "bbox_mAP": self.bbox_mAP,
            "bbox_mAP50": self.bbox_mAP50, "images": self.images, "per_concept": self.per_concept,
        }


def detections_for_image(model, tokenizer, image: Image.Image, image_id: int, categories: dict[int, str],
                         cache: BackboneCache | None = None) -> list[dict]:
    """COCO result dicts (image_id, category_id, segmentation RLE, bbox xywh, score) for every query of every category."""
    category_ids = list(categories)
    per_prompt = predict_many(model, tokenizer, image, [categories[c] for c in category_ids],
                              score_threshold=0.0, nms=None, cache=cache)
    results = []
    for category_id, instances in zip(category_ids, per_prompt):
        for instance in instances[:MAX_DETECTIONS]:
            rle = mask_utils.encode(np.asfortranarray(instance.mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0, x1, y1 = instance.box
            results.append({"image_id": image_id, "category_id": category_id, "segmentation": rle,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(instance.score)})
    return results


@torch.inference_mode()
def evaluate(model, tokenizer, coco: COCO, image_dir: str | Path, image_ids: list[int] | None = None,
             on_image=None) -> EvalResult:
    """segm and bbox mAP of `model` on `image_ids` (default: all images of `coco`).

    on_image(done, total) is called after each image (progress bars).
    """
    image_ids = sorted(image_ids if image_ids is not None else coco.getImgIds())
    if not image_ids:
        raise ValueError("evaluation needs at least one image")
    categories = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    results: list[dict] = []
    for done, image_id in enumerate(image_ids, start=1):
        info = coco.loadImgs(image_id)[0]
        with Image.open(Path(image_dir) / info["file_name"]) as image:
            results.extend(detections_for_image(model, tokenizer, image.convert("RGB"), image_id, categories))
        if on_image is not None:
            on_image(done, len(image_ids))
    segm, segm_per_concept = _coco_eval(coco, results, image_ids, "segm")
    bbox, bbox_per_concept = _coco_eval(coco, results, image_ids, "bbox")
    per_concept = {
        name: {"segm_AP": segm_per_concept.get(cid, 0.0), "bbox_AP": bbox_per_concept.get(cid, 0.0)}
        for cid, name in categories.items()
    }
    return EvalResult(segm_mAP=segm[0], segm_mAP50=segm[1], bbox_mAP=bbox[0], bbox_mAP50=bbox[1],
                      images=len(image_ids), per_concept=per_concept)


def _coco_eval(coco: COCO, results: list[dict], image_ids: list[int], iou_type: str) -> tuple[list[float], dict[int, float]]:
    """(stats[0:2] clamped at 0, {category_id: AP}) of COCOeval; zeros when there is no detection or no GT."""
    has_gt = any(coco.getAnnIds(imgIds=image_ids, iscrowd=False))
    if not results or not has_gt:
        return [0.0, 0.0], {}
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its tables
        detections = coco.loadRes(results)
        evaluator = COCOeval(coco, detections, iou_type)
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [max(0.0, float(value)) for value in evaluator.stats[:2]]
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    per_concept = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        valid = values[values > -1]
        per_concept[category_id] = float(valid.mean()) if valid.size else 0.0
    return stats, per_concept
